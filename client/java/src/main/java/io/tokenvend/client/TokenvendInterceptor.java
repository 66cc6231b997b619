package io.tokenvend.client;

import io.grpc.StatusRuntimeException;
import java.io.IOException;
import java.util.Objects;
import okhttp3.Interceptor;
import okhttp3.Request;
import okhttp3.Response;

/**
 * An OkHttp application interceptor that puts the headers of a tokenvend profile's token on
 * every request. Pair it with {@link TokenvendAuthenticator} to handle 401:
 *
 * <pre>{@code
 * OkHttpClient http = new OkHttpClient.Builder()
 *     .addInterceptor(new TokenvendInterceptor(tokens, "jakamo"))
 *     .authenticator(new TokenvendAuthenticator(tokens, "jakamo"))
 *     .build();
 * }</pre>
 *
 * <p>The token sent is also attached as the request's {@code AccessToken} tag, so that the
 * authenticator reports exactly that token.
 */
public final class TokenvendInterceptor implements Interceptor {
  private final TokenClient tokens;
  private final String profile;

  public TokenvendInterceptor(TokenClient tokens, String profile) {
    this.tokens = Objects.requireNonNull(tokens, "tokens");
    this.profile = Objects.requireNonNull(profile, "profile");
  }

  @Override
  public Response intercept(Chain chain) throws IOException {
    AccessToken token;
    try {
      token = tokens.getToken(profile);
    } catch (StatusRuntimeException e) {
      // OkHttp reports IOExceptions to the caller (also for enqueue()); others would crash.
      throw new TokenUnavailableException(profile, e);
    }
    return chain.proceed(withToken(chain.request(), token));
  }

  static Request withToken(Request request, AccessToken token) {
    Request.Builder b = request.newBuilder().tag(AccessToken.class, token);
    token.headers().forEach(b::header);
    return b.build();
  }
}
