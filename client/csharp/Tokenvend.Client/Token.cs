using System;
using System.Collections.Generic;
using System.Collections.ObjectModel;
using System.Linq;

namespace Tokenvend.Client;

/// <summary>
/// An access token vended by tokenvend. Immutable, so one instance is safely shared by every
/// caller of the local cache. <see cref="ToString"/> never shows the token or header values.
/// </summary>
/// <remarks>
/// The generated <see cref="global::Tokenvend.V1.Token"/> message is not handed out because
/// its <c>ToString()</c> prints the access token as JSON and it is mutable. It was called
/// <c>VendedToken</c> before 0.1.0; every tokenvend client now calls it <c>Token</c>.
/// </remarks>
public sealed class Token
{
    internal Token(global::Tokenvend.V1.Token token, DateTimeOffset receivedAt)
    {
        AccessToken = token.AccessToken;
        TokenType = token.TokenType;
        // An unset expiry is treated as already expired, so such a token is never cached.
        ExpiresAt = token.ExpiresAt is null ? DateTimeOffset.MinValue : token.ExpiresAt.ToDateTimeOffset();
        Scopes = token.Scopes.ToArray();
        Profile = token.Profile;

        var headers = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
        foreach (var header in token.Headers)
        {
            headers[header.Key] = header.Value;
        }
        if (headers.Count == 0 && AccessToken.Length > 0)
        {
            // A server that predates Token.headers: build the one header it would have sent.
            headers["authorization"] = (TokenType.Length > 0 ? TokenType : "Bearer") + " " + AccessToken;
        }
        Headers = new ReadOnlyDictionary<string, string>(headers);
        ReceivedAt = receivedAt;
    }

    /// <summary>The access token itself. Keep it out of logs.</summary>
    public string AccessToken { get; }

    /// <summary>The token type, normally <c>Bearer</c>.</summary>
    public string TokenType { get; }

    /// <summary>When the token stops being valid.</summary>
    public DateTimeOffset ExpiresAt { get; }

    /// <summary>The granted scopes.</summary>
    public IReadOnlyList<string> Scopes { get; }

    /// <summary>
    /// The headers to put on the request to the upstream API: <c>authorization</c> plus any
    /// companion headers the profile configures (such as an API key). Names are matched
    /// case-insensitively.
    /// </summary>
    public IReadOnlyDictionary<string, string> Headers { get; }

    /// <summary>The profile this token belongs to.</summary>
    public string Profile { get; }

    /// <summary>
    /// When this client received the token; <see cref="ExpiresAt"/> minus this is the
    /// lifetime the refresh margin is a tenth of.
    /// </summary>
    public DateTimeOffset ReceivedAt { get; }

    /// <summary>Shows everything but the token and the header values, which are secrets.</summary>
    public override string ToString() =>
        $"Token(profile={Profile}, type={TokenType}, expires_at={ExpiresAt:O}, " +
        $"scopes=[{string.Join(" ", Scopes)}], headers=[{string.Join(", ", Headers.Keys)}], access_token=<redacted>)";
}
