using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Net;
using System.Net.Http;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Threading;
using System.Threading.Tasks;

namespace Tokenvend.Client.Tests;

/// <summary>
/// A tokenvend started by one test with a configuration of its own (<c>serve --config</c>), on
/// free loopback ports; stopped with SIGTERM by <see cref="StopAsync"/> or at disposal.
/// </summary>
public sealed class ConfiguredTokenvend : IAsyncDisposable
{
    /// <summary>The head of every test configuration: shut down at once when stopped.</summary>
    public const string ServerYaml = "server:\n  shutdown_delay: 0s\n  shutdown_grace: 1s\n";

    private readonly Process _process;
    private readonly StringBuilder _output = new();
    private readonly string _dir;

    private ConfiguredTokenvend(Process process, string address, string dir)
    {
        _process = process;
        Address = address;
        _dir = dir;
    }

    /// <summary><c>127.0.0.1:port</c> of the gRPC listener.</summary>
    public string Address { get; }

    public static async Task<ConfiguredTokenvend> StartAsync(string config)
    {
        var dir = Directory.CreateTempSubdirectory("tokenvend-test-").FullName;
        var path = Path.Combine(dir, "tokenvend.yaml");
        await File.WriteAllTextAsync(path, config);
        var address = $"127.0.0.1:{TokenvendServer.FreePort()}";
        var admin = $"127.0.0.1:{TokenvendServer.FreePort()}";
        var start = new ProcessStartInfo(TokenvendServer.Binary())
        {
            UseShellExecute = false,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            ArgumentList = { "serve", "--config", path, "--listen", address, "--admin-listen", admin },
        };
        var process = Process.Start(start) ?? throw new InvalidOperationException("could not start tokenvend");
        var server = new ConfiguredTokenvend(process, address, dir);
        process.OutputDataReceived += (_, e) => server.Record(e.Data);
        process.ErrorDataReceived += (_, e) => server.Record(e.Data);
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();

        using var http = new HttpClient(new SocketsHttpHandler { UseProxy = false });
        var giveUp = DateTime.UtcNow.AddSeconds(20);
        while (true)
        {
            if (process.HasExited)
            {
                throw new InvalidOperationException($"tokenvend exited at start:\n{server.Output()}");
            }
            try
            {
                using var ready = await http.GetAsync($"http://{admin}/readyz");
                if (ready.IsSuccessStatusCode)
                {
                    return server;
                }
            }
            catch (HttpRequestException)
            {
            }
            if (DateTime.UtcNow > giveUp)
            {
                throw new TimeoutException($"tokenvend not ready after 20 s:\n{server.Output()}");
            }
            await Task.Delay(50);
        }
    }

    /// <summary>Stops the server and waits until it has exited.</summary>
    public async Task StopAsync()
    {
        if (!_process.HasExited)
        {
            using (var kill = Process.Start(new ProcessStartInfo("kill")
            {
                UseShellExecute = false,
                ArgumentList = { "-TERM", _process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture) },
            }))
            {
                kill?.WaitForExit();
            }
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
            try
            {
                await _process.WaitForExitAsync(timeout.Token);
            }
            catch (OperationCanceledException)
            {
                _process.Kill(entireProcessTree: true);
            }
        }
    }

    public async ValueTask DisposeAsync()
    {
        await StopAsync();
        _process.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    private void Record(string? line)
    {
        if (line is null)
        {
            return;
        }
        lock (_output)
        {
            _output.AppendLine(line);
        }
    }

    private string Output()
    {
        lock (_output)
        {
            return _output.ToString();
        }
    }
}

/// <summary>
/// A stand-in OAuth 2.0 token endpoint (<c>client_secret_post</c>) for servers a test starts
/// with its own configuration: each client id is a profile with the token lifetime it was
/// registered with, and the issuer counts the tokens it hands out.
/// </summary>
public sealed class TestIssuer : IAsyncDisposable
{
    private const string Secret = "issuer-secret";
    private readonly HttpListener _listener = new();
    private readonly Dictionary<string, TimeSpan> _lifetimes = new(StringComparer.Ordinal);
    private readonly Dictionary<string, int> _issued = new(StringComparer.Ordinal);
    private readonly Task _loop;
    private readonly string _secretFile;

    public TestIssuer()
    {
        BaseAddress = new Uri($"http://127.0.0.1:{TokenvendServer.FreePort()}/");
        _listener.Prefixes.Add(BaseAddress.ToString());
        _listener.Start();
        _loop = Task.Run(ServeAsync);
        _secretFile = Path.GetTempFileName();
        File.WriteAllText(_secretFile, Secret);
    }

    public Uri BaseAddress { get; }

    /// <summary>Registers a client id whose tokens live <paramref name="lifetime"/>.</summary>
    public void Register(string name, TimeSpan lifetime)
    {
        lock (_lifetimes)
        {
            _lifetimes[name] = lifetime;
        }
    }

    /// <summary>How many tokens <paramref name="name"/> was given.</summary>
    public int Issued(string name)
    {
        lock (_lifetimes)
        {
            return _issued.GetValueOrDefault(name);
        }
    }

    /// <summary>
    /// The profile's entry under <c>profiles:</c>. Every report of a token replaces it, so that the
    /// 401 paths can be driven report after report.
    /// </summary>
    public string ProfileYaml(string name, params string[] extra)
    {
        var yaml = new StringBuilder()
            .Append("  ").Append(name).Append(":\n")
            .Append("    token_url: ").Append(BaseAddress).Append("token\n")
            .Append("    client_id: ").Append(name).Append('\n')
            .Append("    client_secret: { file: ").Append(_secretFile).Append(" }\n")
            .Append("    rejected_token_min_interval: 0s\n");
        foreach (var line in extra)
        {
            yaml.Append("    ").Append(line).Append('\n');
        }
        return yaml.ToString();
    }

    public async ValueTask DisposeAsync()
    {
        _listener.Stop();
        _listener.Close();
        await _loop;
        File.Delete(_secretFile);
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
                return;
            }
            string body;
            using (var reader = new StreamReader(context.Request.InputStream, Encoding.UTF8))
            {
                body = await reader.ReadToEndAsync();
            }
            var form = ParseForm(body);
            var id = form.GetValueOrDefault("client_id", "");
            TimeSpan lifetime;
            bool known;
            lock (_lifetimes)
            {
                known = _lifetimes.TryGetValue(id, out lifetime) && form.GetValueOrDefault("client_secret") == Secret;
                if (known)
                {
                    _issued[id] = _issued.GetValueOrDefault(id) + 1;
                }
            }
            string answer;
            if (known)
            {
                answer = JsonSerializer.Serialize(new Dictionary<string, object>
                {
                    ["access_token"] = id + "-" + Convert.ToHexString(RandomNumberGenerator.GetBytes(24)),
                    ["token_type"] = "Bearer",
                    ["expires_in"] = (int)lifetime.TotalSeconds,
                });
            }
            else
            {
                context.Response.StatusCode = 401;
                answer = "{\"error\":\"invalid_client\"}";
            }
            var bytes = Encoding.UTF8.GetBytes(answer);
            context.Response.ContentType = "application/json";
            context.Response.ContentLength64 = bytes.Length;
            await context.Response.OutputStream.WriteAsync(bytes);
            context.Response.Close();
        }
    }

    private static Dictionary<string, string> ParseForm(string body)
    {
        var form = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var pair in body.Split('&', StringSplitOptions.RemoveEmptyEntries))
        {
            var parts = pair.Split('=', 2);
            string Decode(string s) => Uri.UnescapeDataString(s.Replace('+', ' '));
            form[Decode(parts[0])] = parts.Length > 1 ? Decode(parts[1]) : "";
        }
        return form;
    }
}

/// <summary>Accepts connections on loopback and never answers on them: a tokenvend that hangs.</summary>
public sealed class HungListener : IDisposable
{
    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    private readonly List<Socket> _accepted = new();

    public HungListener()
    {
        _listener.Start();
        Address = $"127.0.0.1:{((IPEndPoint)_listener.LocalEndpoint).Port}";
        _ = Task.Run(async () =>
        {
            while (true)
            {
                try
                {
                    var socket = await _listener.AcceptSocketAsync();
                    lock (_accepted)
                    {
                        _accepted.Add(socket);
                    }
                }
                catch (Exception)
                {
                    return; // stopped
                }
            }
        });
    }

    public string Address { get; }

    public void Dispose()
    {
        _listener.Stop();
        lock (_accepted)
        {
            foreach (var socket in _accepted)
            {
                socket.Dispose();
            }
        }
    }
}

/// <summary>
/// Mints Kubernetes-style ServiceAccount tokens (ES256 JWTs) and writes the key set tokenvend
/// verifies them with.
/// </summary>
public sealed class ServiceAccounts : IDisposable
{
    public const string Issuer = "https://kubernetes.default.svc.cluster.local";

    private readonly ECDsa _key = ECDsa.Create(ECCurve.NamedCurves.nistP256);

    public ServiceAccounts()
    {
        var point = _key.ExportParameters(includePrivateParameters: false).Q;
        JwksFile = Path.GetTempFileName();
        File.WriteAllText(JwksFile, JsonSerializer.Serialize(new
        {
            keys = new[]
            {
                new Dictionary<string, string>
                {
                    ["kty"] = "EC", ["crv"] = "P-256", ["alg"] = "ES256", ["use"] = "sig", ["kid"] = "sa-1",
                    ["x"] = Base64Url(point.X!), ["y"] = Base64Url(point.Y!),
                },
            },
        }));
    }

    public string JwksFile { get; }

    /// <summary>A token for <c>system:serviceaccount:namespace:name</c>, valid for an hour.</summary>
    public string Mint(string @namespace, string name)
    {
        var now = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        var header = JsonSerializer.SerializeToUtf8Bytes(new Dictionary<string, string> { ["alg"] = "ES256", ["kid"] = "sa-1", ["typ"] = "JWT" });
        var claims = JsonSerializer.SerializeToUtf8Bytes(new Dictionary<string, object>
        {
            ["iss"] = Issuer,
            ["aud"] = new[] { "tokenvend" },
            ["sub"] = $"system:serviceaccount:{@namespace}:{name}",
            ["iat"] = now,
            ["nbf"] = now,
            ["exp"] = now + 3600,
        });
        var input = Base64Url(header) + "." + Base64Url(claims);
        // .NET signs in the IEEE P1363 form (r || s) that JWS wants.
        var signature = _key.SignData(Encoding.ASCII.GetBytes(input), HashAlgorithmName.SHA256);
        return input + "." + Base64Url(signature);
    }

    public void Dispose()
    {
        _key.Dispose();
        File.Delete(JwksFile);
    }

    private static string Base64Url(byte[] bytes) =>
        Convert.ToBase64String(bytes).TrimEnd('=').Replace('+', '-').Replace('/', '_');
}
