using System;
using System.Net.Http;
using Grpc.Core;

namespace Tokenvend.Client;

/// <summary>
/// What <see cref="TokenClient"/> and <see cref="TokenvendHandler"/> throw when tokenvend
/// refused or could not be reached. It is an <see cref="HttpRequestException"/>, so code that
/// already handles <see cref="HttpClient"/> failures handles it too; the gRPC status is its
/// <see cref="Exception.InnerException"/> (an <see cref="RpcException"/>) and its
/// <see cref="GrpcStatusCode"/>. The message names the profile and the cause, never a token.
/// </summary>
/// <remarks>
/// Behind an <see cref="HttpClient"/> whose <see cref="HttpClient.Timeout"/> fired, the caller
/// sees .NET's usual <see cref="System.Threading.Tasks.TaskCanceledException"/> with a <see cref="TimeoutException"/>
/// inside, and this exception inside that; <see cref="IsRetryable(Exception)"/> looks through
/// the chain.
/// </remarks>
public sealed class TokenvendException : HttpRequestException
{
    /// <summary>Wraps a failed call to tokenvend for <paramref name="profile"/>.</summary>
    public TokenvendException(string profile, RpcException cause)
        : base($"tokenvend: profile \"{profile}\": {cause.StatusCode}: {cause.Status.Detail}", cause)
    {
        Profile = profile;
        GrpcStatusCode = cause.StatusCode;
    }

    /// <summary>The profile asked for.</summary>
    public string Profile { get; }

    /// <summary>
    /// The gRPC status code: from tokenvend, from the gRPC library (<c>Unavailable</c> when
    /// tokenvend cannot be reached), <c>DeadlineExceeded</c> when the deadline passed, or
    /// <c>Cancelled</c> when the caller's <see cref="System.Threading.CancellationToken"/> fired.
    /// </summary>
    public StatusCode GrpcStatusCode { get; }

    /// <summary>
    /// Whether asking again after a backoff can succeed: <c>Unavailable</c>,
    /// <c>DeadlineExceeded</c>, <c>ResourceExhausted</c> and <c>Aborted</c>. An unknown or
    /// forbidden profile (<c>NotFound</c>), a refused caller (<c>Unauthenticated</c>,
    /// <c>PermissionDenied</c>), refused profile credentials (<c>FailedPrecondition</c>) and
    /// the rest give the same answer again.
    /// </summary>
    public bool Retryable => IsRetryableCode(GrpcStatusCode);

    /// <summary>
    /// Whether <paramref name="error"/>, or an exception inside it, says a retry can help: a
    /// retryable <see cref="TokenvendException"/> or <see cref="RpcException"/>, or a
    /// <see cref="TimeoutException"/> (an <see cref="HttpClient.Timeout"/> that fired).
    /// </summary>
    public static bool IsRetryable(Exception? error)
    {
        for (var e = error; e is not null; e = e.InnerException)
        {
            switch (e)
            {
                case TokenvendException t:
                    return t.Retryable;
                case RpcException r:
                    return IsRetryableCode(r.StatusCode);
                case TimeoutException:
                    return true;
            }
        }
        return false;
    }

    internal static bool IsRetryableCode(StatusCode code) =>
        code is StatusCode.Unavailable or StatusCode.DeadlineExceeded or StatusCode.ResourceExhausted or StatusCode.Aborted;
}
