package io.tokenvend.client;

import io.grpc.CallOptions;
import io.grpc.Channel;
import io.grpc.ClientCall;
import io.grpc.ClientInterceptor;
import io.grpc.MethodDescriptor;
import java.util.concurrent.atomic.AtomicInteger;

/** Counts the RPCs a client starts, to tell a cache hit from a call to tokenvend. */
final class RpcCounter implements ClientInterceptor {
  private final AtomicInteger count = new AtomicInteger();

  int count() {
    return count.get();
  }

  @Override
  public <Q, R> ClientCall<Q, R> interceptCall(
      MethodDescriptor<Q, R> method, CallOptions options, Channel next) {
    count.incrementAndGet();
    return next.newCall(method, options);
  }
}
