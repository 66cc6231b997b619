using System;
using System.Threading;
using System.Threading.Tasks;

namespace Tokenvend.Client;

/// <summary>
/// A running <see cref="TokenClient.Watch(string)"/>: keeps one profile's local copy current
/// until it is disposed or its <see cref="TokenClient"/> is.
/// </summary>
public sealed class TokenWatch : IDisposable, IAsyncDisposable
{
    private readonly CancellationTokenSource _stop;
    private readonly TaskCompletionSource _ready = new(TaskCreationOptions.RunContinuationsAsynchronously);

    internal TokenWatch(string profile, CancellationTokenSource stop)
    {
        Profile = profile;
        _stop = stop;
    }

    /// <summary>The profile watched.</summary>
    public string Profile { get; }

    /// <summary>
    /// Completes when the first token from the stream is in the local copy; fails with the first
    /// attempt's <see cref="TokenvendException"/> (the watch goes on trying if it is
    /// <see cref="TokenvendException.Retryable"/>); is cancelled if the watch stops first.
    /// </summary>
    public Task Ready => _ready.Task;

    internal CancellationToken StopToken => _stop.Token;

    internal Task Loop { get; set; } = Task.CompletedTask;

    internal void Settle(Exception? error)
    {
        switch (error)
        {
            case null:
                _ready.TrySetResult();
                break;
            case OperationCanceledException:
                _ready.TrySetCanceled(_stop.Token);
                break;
            default:
                _ready.TrySetException(error);
                break;
        }
    }

    /// <summary>Stops the watch; the local copy stays, served while it is valid.</summary>
    public void Dispose() => _stop.Cancel();

    /// <summary>Stops the watch and waits until its stream is closed.</summary>
    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        await Loop.ConfigureAwait(false);
        _stop.Dispose();
    }
}
