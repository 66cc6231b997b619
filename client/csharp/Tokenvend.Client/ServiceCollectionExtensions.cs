using System;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Tokenvend.Client;

// The conventional namespace for registration helpers, so they show up next to AddHttpClient.
namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Registers tokenvend with <c>Microsoft.Extensions.DependencyInjection</c> and <c>IHttpClientFactory</c>.</summary>
public static class TokenvendServiceCollectionExtensions
{
    /// <summary>
    /// Registers one shared <see cref="TokenClient"/>, so that every HttpClient of the process
    /// uses the same local token cache. The container disposes it.
    /// </summary>
    public static IServiceCollection AddTokenvendClient(this IServiceCollection services, Action<TokenClientOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(configure);
        services.TryAddSingleton(_ =>
        {
            var options = new TokenClientOptions();
            configure(options);
            return new TokenClient(options);
        });
        return services;
    }

    /// <summary>
    /// Adds a <see cref="TokenvendHandler"/> for <paramref name="profile"/> to this HttpClient:
    /// <c>services.AddHttpClient("jakamo").AddTokenvend("jakamo")</c>. Needs
    /// <see cref="AddTokenvendClient"/> (or a <see cref="TokenClient"/> registered otherwise).
    /// </summary>
    public static IHttpClientBuilder AddTokenvend(this IHttpClientBuilder builder, string profile, TimeSpan? minTtl = null)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentException.ThrowIfNullOrEmpty(profile);
        // The factory rebuilds handlers every few minutes; the handler is cheap because the
        // cache lives in the shared TokenClient.
        return builder.AddHttpMessageHandler(services =>
            new TokenvendHandler(services.GetRequiredService<TokenClient>(), profile) { MinTtl = minTtl });
    }
}
