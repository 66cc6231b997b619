using System;
using System.Collections.Generic;
using System.Linq;
using System.Net;
using System.Net.Http;
using System.Net.Http.Headers;
using System.Threading;
using System.Threading.Tasks;

namespace Tokenvend.Client;

/// <summary>
/// An <see cref="HttpClient"/> handler that puts a tokenvend token's headers on every request
/// and, when the upstream API answers 401, reports that token as rejected and sends the
/// request once more with the replacement. A second 401 is returned as it is.
/// </summary>
/// <remarks>
/// <para>
/// The request is re-sent only when its body can be sent twice: no content, or content that
/// holds its bytes in memory (<see cref="ByteArrayContent"/> and so <see cref="StringContent"/>,
/// <see cref="FormUrlEncodedContent"/>, <see cref="ReadOnlyMemoryContent"/>, and multipart
/// content made only of those). A <see cref="StreamContent"/> or a custom content may be
/// reading from a network stream or a generator that is already drained, so such a 401 is
/// returned unretried (the token is still reported), unless <see cref="BufferContentForRetry"/>
/// is set.
/// </para>
/// <para>
/// Any headers of the same names already on the request are replaced, so a stale
/// <c>Authorization</c> from <c>DefaultRequestHeaders</c> never wins.
/// </para>
/// <para>
/// The token fetch honours the request's <see cref="CancellationToken"/>, into which
/// <see cref="HttpClient"/> links its <see cref="HttpClient.Timeout"/>: a tokenvend that does
/// not answer fails the request when the HTTP timeout says so, as .NET's usual
/// <see cref="TaskCanceledException"/> (with a <see cref="TimeoutException"/> inside). A
/// tokenvend that refuses or cannot be reached fails it with a <see cref="TokenvendException"/>,
/// an <see cref="HttpRequestException"/> carrying the gRPC status and whether to retry.
/// </para>
/// </remarks>
public sealed class TokenvendHandler : DelegatingHandler
{
    private readonly TokenClient _tokens;
    private readonly string _profile;

    /// <summary>Handles requests with tokens of <paramref name="profile"/>; set <see cref="DelegatingHandler.InnerHandler"/> unless a factory does.</summary>
    public TokenvendHandler(TokenClient tokens, string profile)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        ArgumentException.ThrowIfNullOrEmpty(profile);
        _tokens = tokens;
        _profile = profile;
    }

    /// <summary>Handles requests with tokens of <paramref name="profile"/>, passing them on to <paramref name="innerHandler"/>.</summary>
    public TokenvendHandler(TokenClient tokens, string profile, HttpMessageHandler innerHandler)
        : this(tokens, profile)
    {
        InnerHandler = innerHandler;
    }

    /// <summary>The least time the token must stay valid, for requests that run long. Default none.</summary>
    public TimeSpan? MinTtl { get; set; }

    /// <summary>
    /// Load a body that cannot otherwise be re-sent into memory before the first attempt, so
    /// that a 401 can be retried. Costs the body's size in memory; off by default.
    /// </summary>
    public bool BufferContentForRetry { get; set; }

    /// <inheritdoc />
    protected override async Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
    {
        var canResend = CanResend(request.Content);
        if (!canResend && BufferContentForRetry && request.Content is not null)
        {
            await request.Content.LoadIntoBufferAsync().ConfigureAwait(false);
            canResend = true;
        }

        var token = await _tokens.GetTokenAsync(_profile, MinTtl ?? TimeSpan.Zero, cancellationToken).ConfigureAwait(false);
        Apply(request, token);
        var response = await base.SendAsync(request, cancellationToken).ConfigureAwait(false);
        if (response.StatusCode != HttpStatusCode.Unauthorized)
        {
            return response;
        }
        Token fresh;
        try
        {
            // Reported even when the request cannot be re-sent, so that the next request does
            // not carry the refused token.
            fresh = await _tokens.RejectAsync(_profile, token.AccessToken, cancellationToken).ConfigureAwait(false);
        }
        catch (TokenvendException)
        {
            // The caller gets the upstream's answer rather than an error about tokenvend; a
            // tokenvend outage shows on its next request.
            return response;
        }
        catch
        {
            response.Dispose();
            throw;
        }
        if (!canResend)
        {
            return response;
        }
        if (string.Equals(fresh.AccessToken, token.AccessToken, StringComparison.Ordinal))
        {
            // tokenvend has nothing newer: the same token would only be refused again.
            return response;
        }

        // Frees the 401's connection for the second attempt.
        response.Dispose();
        Apply(request, fresh);
        return await base.SendAsync(request, cancellationToken).ConfigureAwait(false);
    }

    // .NET keeps these on HttpContent.Headers and throws if they are named on the request.
    private static readonly HashSet<string> ContentHeaderNames = new(StringComparer.OrdinalIgnoreCase)
    {
        "allow", "content-disposition", "content-encoding", "content-language", "content-length",
        "content-location", "content-md5", "content-range", "content-type", "expires", "last-modified",
    };

    private static void Apply(HttpRequestMessage request, Token token)
    {
        foreach (var (name, value) in token.Headers)
        {
            HttpHeaders? target = ContentHeaderNames.Contains(name) ? request.Content?.Headers : request.Headers;
            if (target is null)
            {
                continue;
            }
            target.Remove(name);
            target.TryAddWithoutValidation(name, value);
        }
    }

    private static bool CanResend(HttpContent? content) => content switch
    {
        null => true,
        ByteArrayContent => true,
        ReadOnlyMemoryContent => true,
        MultipartContent parts => parts.All(CanResend),
        _ => false,
    };
}
