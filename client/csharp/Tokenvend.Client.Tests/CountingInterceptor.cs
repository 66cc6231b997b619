using System;
using System.Collections.Concurrent;
using System.Threading;
using Grpc.Core;
using Grpc.Core.Interceptors;
using Tokenvend.V1;

namespace Tokenvend.Client.Tests;

/// <summary>
/// Sits between the client and the real server: counts the RPCs the client makes, records the
/// authorization metadata it sends, and can play an unreachable tokenvend.
/// </summary>
public sealed class CountingInterceptor : Interceptor
{
    private int _calls;

    public int Calls => Volatile.Read(ref _calls);

    public ConcurrentQueue<string?> Authorizations { get; } = new();

    /// <summary>Each GetToken RPC: when it was made and whether it carried a <c>min_ttl</c>.</summary>
    public ConcurrentQueue<(DateTimeOffset At, bool MinTtl)> Requests { get; } = new();

    public volatile bool Unavailable;

    public override AsyncUnaryCall<TResponse> AsyncUnaryCall<TRequest, TResponse>(
        TRequest request,
        ClientInterceptorContext<TRequest, TResponse> context,
        AsyncUnaryCallContinuation<TRequest, TResponse> continuation)
    {
        Interlocked.Increment(ref _calls);
        Authorizations.Enqueue(context.Options.Headers?.GetValue("authorization"));
        Requests.Enqueue((DateTimeOffset.UtcNow, request is GetTokenRequest get && get.MinTtl is not null));
        if (Unavailable)
        {
            throw new RpcException(new Status(StatusCode.Unavailable, "tokenvend unreachable (injected by the test)"));
        }
        return continuation(request, context);
    }
}
