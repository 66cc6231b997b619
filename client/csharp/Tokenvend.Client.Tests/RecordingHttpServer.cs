using System;
using System.Collections.Generic;
using System.IO;
using System.Net;
using System.Text;
using System.Threading.Tasks;

namespace Tokenvend.Client.Tests;

/// <summary>What the upstream API saw of one request.</summary>
public sealed record RecordedRequest(string Method, string? Authorization, string Body);

/// <summary>
/// A stand-in for the upstream API (stdlib <see cref="HttpListener"/>): answers the n-th request
/// (from 0) with <c>statusFor(n)</c> and records each request's Authorization header and body.
/// </summary>
public sealed class RecordingHttpServer : IAsyncDisposable
{
    private readonly HttpListener _listener = new();
    private readonly Func<int, HttpStatusCode> _statusFor;
    private readonly List<RecordedRequest> _requests = new();
    private readonly Task _loop;

    public RecordingHttpServer(Func<int, HttpStatusCode> statusFor)
    {
        _statusFor = statusFor;
        BaseAddress = new Uri($"http://127.0.0.1:{TokenvendServer.FreePort()}/");
        _listener.Prefixes.Add(BaseAddress.ToString());
        _listener.Start();
        _loop = Task.Run(ServeAsync);
    }

    public Uri BaseAddress { get; }

    public IReadOnlyList<RecordedRequest> Requests
    {
        get
        {
            lock (_requests)
            {
                return _requests.ToArray();
            }
        }
    }

    public async ValueTask DisposeAsync()
    {
        _listener.Stop();
        _listener.Close();
        await _loop;
    }

    private async Task ServeAsync()
    {
        while (true)
        {
            HttpListenerContext context;
            try
            {
                context = await _listener.GetContextAsync();
            }
            catch (Exception) when (!_listener.IsListening)
            {
                return; // DisposeAsync stopped the listener
            }

            string body;
            using (var reader = new StreamReader(context.Request.InputStream, Encoding.UTF8))
            {
                body = await reader.ReadToEndAsync();
            }
            int index;
            lock (_requests)
            {
                index = _requests.Count;
                _requests.Add(new RecordedRequest(context.Request.HttpMethod, context.Request.Headers["Authorization"], body));
            }
            context.Response.StatusCode = (int)_statusFor(index);
            context.Response.ContentLength64 = 0;
            context.Response.Close();
        }
    }
}
