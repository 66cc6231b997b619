using System;
using System.Net.Http;
using Grpc.Core;

namespace Tokenvend.Client;

/// <summary>Settings for <see cref="TokenClient"/>.</summary>
public sealed class TokenClientOptions
{
    /// <summary>
    /// Where tokenvend listens: <c>host:port</c> (plaintext, or TLS when
    /// <see cref="Credentials"/> is secure) or a full <c>http://</c> / <c>https://</c> URI.
    /// Ignored when the client is built on a <see cref="CallInvoker"/>.
    /// </summary>
    public string Address { get; set; } = "127.0.0.1:50051";

    /// <summary>
    /// Channel credentials, e.g. <see cref="ChannelCredentials.SecureSsl"/>. When set to secure
    /// credentials a <c>host:port</c> address is dialled over TLS.
    /// </summary>
    public ChannelCredentials? Credentials { get; set; }

    /// <summary>
    /// The HTTP/2 handler for the channel, for custom TLS: a <see cref="SocketsHttpHandler"/>
    /// with <c>SslOptions.ClientCertificates</c> for mTLS, or a private CA check in
    /// <c>SslOptions.RemoteCertificateValidationCallback</c>. Owned by the caller.
    /// </summary>
    public HttpMessageHandler? HttpHandler { get; set; }

    /// <summary>
    /// A file whose content is sent as <c>authorization: Bearer &lt;content&gt;</c> on every call,
    /// such as a Kubernetes projected ServiceAccount token
    /// (<c>/var/run/secrets/tokens/tokenvend</c>). Re-read when it changes and at least every
    /// minute, because the kubelet rotates it in place.
    /// </summary>
    public string? ServiceAccountTokenPath { get; set; }

    /// <summary>
    /// The cap on the refresh margin. A local copy is served while it has more than its margin
    /// left; the margin is 10 % of the token's lifetime (from when the client received it) but
    /// at most this. tokenvend replaces tokens at about 80 % of their lifetime, so at 90 % the
    /// next call finds the new one in tokenvend's cache. Default 60 s.
    /// </summary>
    public TimeSpan MaxRefreshMargin { get; set; } = TimeSpan.FromSeconds(60);

    /// <summary>The old name of <see cref="MaxRefreshMargin"/>, which is now a cap on 10 % of the lifetime.</summary>
    [Obsolete("Use MaxRefreshMargin: the margin is 10 % of the token's lifetime, capped by it.")]
    public TimeSpan RefreshMargin
    {
        get => MaxRefreshMargin;
        set => MaxRefreshMargin = value;
    }

    /// <summary>
    /// The deadline of each call to tokenvend when the caller's <see cref="System.Threading.CancellationToken"/>
    /// does not end it sooner. Default 10 s.
    /// </summary>
    public TimeSpan CallTimeout { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>The clock, replaceable in tests.</summary>
    public TimeProvider TimeProvider { get; set; } = TimeProvider.System;
}
