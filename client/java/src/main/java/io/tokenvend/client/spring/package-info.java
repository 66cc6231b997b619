/**
 * Spring adapters: {@link io.tokenvend.client.spring.TokenvendRequestInterceptor} for {@code
 * RestClient} and {@code RestTemplate} (spring-web 6), {@link
 * io.tokenvend.client.spring.TokenvendExchangeFilter} for {@code WebClient} (spring-webflux 6).
 *
 * <p>Both put a tokenvend profile's token on every request and retry a 401 once with the token
 * tokenvend returns for the refused one. Spring is an optional dependency of this library: the
 * application brings its own.
 */
package io.tokenvend.client.spring;
