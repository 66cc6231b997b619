package io.tokenvend.client;

import org.junit.jupiter.api.extension.BeforeAllCallback;
import org.junit.jupiter.api.extension.ExtensionContext;
import org.junit.jupiter.api.extension.ParameterContext;
import org.junit.jupiter.api.extension.ParameterResolver;

/**
 * Runs {@code tokenvend serve --dev} once for the whole test run and stops it when the run
 * ends. Test classes use {@code @ExtendWith(TokenvendServer.class)} and take a {@code
 * TokenvendServer} parameter.
 */
public final class TokenvendServer
    implements BeforeAllCallback, ParameterResolver, ExtensionContext.Store.CloseableResource {
  private TokenvendProcess process;

  /** The gRPC address, {@code 127.0.0.1:<port>}. */
  public String target() {
    return process.target();
  }

  @Override
  public void beforeAll(ExtensionContext context) {
    // The root store outlives every test class, so one server serves them all.
    context
        .getRoot()
        .getStore(ExtensionContext.Namespace.GLOBAL)
        .getOrComputeIfAbsent(TokenvendServer.class, k -> start(), TokenvendServer.class);
  }

  @Override
  public boolean supportsParameter(ParameterContext p, ExtensionContext e) {
    return p.getParameter().getType() == TokenvendServer.class;
  }

  @Override
  public Object resolveParameter(ParameterContext p, ExtensionContext e) {
    return e.getRoot()
        .getStore(ExtensionContext.Namespace.GLOBAL)
        .get(TokenvendServer.class, TokenvendServer.class);
  }

  private static TokenvendServer start() {
    try {
      TokenvendServer s = new TokenvendServer();
      s.process = TokenvendProcess.dev("server");
      return s;
    } catch (Exception e) {
      throw new IllegalStateException("cannot start tokenvend: " + e.getMessage(), e);
    }
  }

  @Override
  public void close() {
    process.close();
  }
}
