using System;
using System.Diagnostics;
using System.IO;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Threading;
using System.Threading.Tasks;
using Grpc.Core;
using Grpc.Net.Client;
using Tokenvend.V1;
using Xunit;

namespace Tokenvend.Client.Tests;

/// <summary>
/// The real tokenvend binary in <c>--dev</c> mode (built-in issuer, profile <c>demo</c>), started
/// once for all tests on free loopback ports and stopped with SIGTERM at the end.
/// </summary>
public sealed class TokenvendServer : IAsyncLifetime
{
    private readonly StringBuilder _output = new();
    private Process? _process;
    private GrpcChannel? _channel;

    /// <summary><c>127.0.0.1:port</c> of the gRPC listener.</summary>
    public string Address { get; private set; } = "";

    /// <summary>The same as a URI, for <see cref="GrpcChannel.ForAddress(string)"/>.</summary>
    public string HttpAddress => "http://" + Address;

    public async Task InitializeAsync()
    {
        var binary = Binary();
        var (port, adminPort) = TwoFreePorts();
        Address = $"127.0.0.1:{port}";
        var start = new ProcessStartInfo(binary)
        {
            UseShellExecute = false,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            ArgumentList = { "serve", "--dev", "--listen", Address, "--admin-listen", $"127.0.0.1:{adminPort}" },
        };
        _process = Process.Start(start) ?? throw new InvalidOperationException("could not start " + binary);
        _process.OutputDataReceived += (_, e) => Record(e.Data);
        _process.ErrorDataReceived += (_, e) => Record(e.Data);
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();

        _channel = GrpcChannel.ForAddress(HttpAddress);
        await WaitUntilReadyAsync(new TokenService.TokenServiceClient(_channel));
    }

    /// <summary>The server binary: <c>$TOKENVEND_BIN</c>, else the repository's debug build.</summary>
    public static string Binary()
    {
        var binary = Environment.GetEnvironmentVariable("TOKENVEND_BIN");
        if (string.IsNullOrEmpty(binary))
        {
            binary = Path.Combine(FindRepoRoot(), "target", "debug", "tokenvend");
        }
        if (!File.Exists(binary))
        {
            throw new InvalidOperationException(
                $"tokenvend not found at {binary}: run `cargo build -p tokenvend-server --bin tokenvend` or set TOKENVEND_BIN");
        }
        return binary;
    }

    /// <summary>The token tokenvend holds now for <paramref name="profile"/>, asked directly (no client cache).</summary>
    public async Task<string> CurrentAccessTokenAsync(string profile = "demo")
    {
        var stub = new TokenService.TokenServiceClient(_channel!);
        var token = await stub.GetTokenAsync(new GetTokenRequest { Profile = profile }, deadline: DateTime.UtcNow.AddSeconds(10));
        return token.AccessToken;
    }

    public async Task DisposeAsync()
    {
        _channel?.Dispose();
        if (_process is null)
        {
            return;
        }
        if (!_process.HasExited)
        {
            // SIGTERM, so that the server shuts down the way it does in production; .NET itself
            // can only send SIGKILL.
            try
            {
                using var kill = Process.Start(new ProcessStartInfo("kill")
                {
                    UseShellExecute = false,
                    ArgumentList = { "-TERM", _process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture) },
                });
                kill?.WaitForExit();
            }
            catch (System.ComponentModel.Win32Exception)
            {
                _process.Kill(entireProcessTree: true); // no kill(1): Windows, or a bare image
            }
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
            try
            {
                await _process.WaitForExitAsync(timeout.Token);
            }
            catch (OperationCanceledException)
            {
                _process.Kill(entireProcessTree: true);
            }
        }
        _process.Dispose();
    }

    /// <summary>A port nothing listens on right now.</summary>
    public static int FreePort() => TwoFreePorts().Item1;

    private static (int, int) TwoFreePorts()
    {
        // Both held open at once so that the two differ.
        var a = new TcpListener(IPAddress.Loopback, 0);
        var b = new TcpListener(IPAddress.Loopback, 0);
        a.Start();
        b.Start();
        try
        {
            return (((IPEndPoint)a.LocalEndpoint).Port, ((IPEndPoint)b.LocalEndpoint).Port);
        }
        finally
        {
            a.Stop();
            b.Stop();
        }
    }

    private async Task WaitUntilReadyAsync(TokenService.TokenServiceClient stub)
    {
        var giveUp = DateTime.UtcNow.AddSeconds(30);
        while (true)
        {
            if (_process!.HasExited)
            {
                throw new InvalidOperationException($"tokenvend exited with code {_process.ExitCode}:\n{Output()}");
            }
            try
            {
                await stub.GetTokenAsync(new GetTokenRequest { Profile = "demo" }, deadline: DateTime.UtcNow.AddSeconds(2));
                return;
            }
            catch (RpcException e)
            {
                if (DateTime.UtcNow > giveUp)
                {
                    throw new TimeoutException($"tokenvend at {Address} not ready after 30 s:\n{Output()}", e);
                }
            }
            await Task.Delay(200);
        }
    }

    private void Record(string? line)
    {
        if (line is null)
        {
            return;
        }
        lock (_output)
        {
            _output.AppendLine(line);
        }
    }

    private string Output()
    {
        lock (_output)
        {
            return _output.ToString();
        }
    }

    private static string FindRepoRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "proto", "tokenvend", "v1", "tokenvend.proto")))
            {
                return dir.FullName;
            }
        }
        throw new InvalidOperationException("repository root not found above " + AppContext.BaseDirectory + "; set TOKENVEND_BIN");
    }
}

/// <summary>All test classes share one server and, being in one collection, run one at a time.</summary>
[CollectionDefinition(Name)]
public sealed class TokenvendCollection : ICollectionFixture<TokenvendServer>
{
    public const string Name = "tokenvend";
}
