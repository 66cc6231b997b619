package io.tokenvend.client;

import io.grpc.CallOptions;
import io.grpc.Channel;
import io.grpc.ClientCall;
import io.grpc.ClientInterceptor;
import io.grpc.ForwardingClientCall;
import io.grpc.MethodDescriptor;
import io.tokenvend.v1.GetTokenRequest;
import io.tokenvend.v1.TokenServiceGrpc;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;

/**
 * Records the GetToken requests a client sends (and when), to tell a cache hit from a call to
 * tokenvend and to see what each call asked for.
 */
final class RpcCounter implements ClientInterceptor {
  record Sent(GetTokenRequest request, long nanoTime) {}

  private final List<Sent> sent = new CopyOnWriteArrayList<>();
  private final List<String> watches = new CopyOnWriteArrayList<>();

  /** GetToken calls made. */
  int count() {
    return sent.size();
  }

  List<Sent> sent() {
    return sent;
  }

  /** WatchToken streams opened. */
  int watches() {
    return watches.size();
  }

  @Override
  public <Q, R> ClientCall<Q, R> interceptCall(
      MethodDescriptor<Q, R> method, CallOptions options, Channel next) {
    if (method.getFullMethodName().equals(TokenServiceGrpc.getWatchTokenMethod().getFullMethodName())) {
      watches.add(method.getFullMethodName());
    }
    return new ForwardingClientCall.SimpleForwardingClientCall<Q, R>(next.newCall(method, options)) {
      @Override
      public void sendMessage(Q message) {
        if (message instanceof GetTokenRequest r) {
          sent.add(new Sent(r, System.nanoTime()));
        }
        super.sendMessage(message);
      }
    };
  }
}
