package io.tokenvend.client;

import java.math.BigInteger;
import java.nio.charset.StandardCharsets;
import java.security.GeneralSecurityException;
import java.security.KeyPair;
import java.security.KeyPairGenerator;
import java.security.Signature;
import java.security.interfaces.RSAPublicKey;
import java.time.Instant;
import java.util.Arrays;
import java.util.Base64;

/** Signs Kubernetes-style ServiceAccount tokens (RS256) and publishes the key as a JWKS. */
final class ServiceAccountIssuer {
  static final String ISSUER = "https://kubernetes.default.svc.test";
  private static final String KID = "test-sa-1";

  private final KeyPair keys;

  ServiceAccountIssuer() throws GeneralSecurityException {
    KeyPairGenerator g = KeyPairGenerator.getInstance("RSA");
    g.initialize(2048);
    keys = g.generateKeyPair();
  }

  /** A token for {@code system:serviceaccount:<namespace>:<name>}, audience tokenvend. */
  String token(String namespace, String name) throws GeneralSecurityException {
    long now = Instant.now().getEpochSecond();
    String header = "{\"alg\":\"RS256\",\"typ\":\"JWT\",\"kid\":\"" + KID + "\"}";
    String claims =
        "{\"iss\":\""
            + ISSUER
            + "\",\"aud\":[\"tokenvend\"],\"sub\":\"system:serviceaccount:"
            + namespace
            + ":"
            + name
            + "\",\"iat\":"
            + now
            + ",\"nbf\":"
            + now
            + ",\"exp\":"
            + (now + 3600)
            + "}";
    String input = b64(header.getBytes(StandardCharsets.UTF_8)) + "." + b64(claims.getBytes(StandardCharsets.UTF_8));
    Signature s = Signature.getInstance("SHA256withRSA");
    s.initSign(keys.getPrivate());
    s.update(input.getBytes(StandardCharsets.US_ASCII));
    return input + "." + b64(s.sign());
  }

  /** The public key as a JWKS document. */
  String jwks() {
    RSAPublicKey pub = (RSAPublicKey) keys.getPublic();
    return "{\"keys\":[{\"kty\":\"RSA\",\"alg\":\"RS256\",\"use\":\"sig\",\"kid\":\""
        + KID
        + "\",\"n\":\""
        + b64(unsigned(pub.getModulus()))
        + "\",\"e\":\""
        + b64(unsigned(pub.getPublicExponent()))
        + "\"}]}";
  }

  private static byte[] unsigned(BigInteger n) {
    byte[] b = n.toByteArray();
    return b[0] == 0 ? Arrays.copyOfRange(b, 1, b.length) : b;
  }

  private static String b64(byte[] b) {
    return Base64.getUrlEncoder().withoutPadding().encodeToString(b);
  }
}
