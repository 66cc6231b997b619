using System;
using System.IO;

namespace Tokenvend.Client;

/// <summary>
/// The caller's own identity token, read from a file that is rotated in place (Kubernetes
/// swaps a symlink under projected volumes, so both the content and the mtime change).
/// </summary>
internal sealed class ServiceAccountTokenFile
{
    // Even if an mtime change is missed (coarse timestamps, a copy that keeps the mtime),
    // a rotated token is picked up well before the kubelet's old one expires.
    private static readonly TimeSpan MaxAge = TimeSpan.FromMinutes(1);

    private readonly string _path;
    private readonly TimeProvider _time;
    private readonly object _lock = new();
    private string? _value;
    private DateTime _mtime;
    private DateTimeOffset _readAt;

    public ServiceAccountTokenFile(string path, TimeProvider time)
    {
        _path = path;
        _time = time;
    }

    public string Read()
    {
        lock (_lock)
        {
            var now = _time.GetUtcNow();
            var mtime = File.GetLastWriteTimeUtc(_path);
            if (_value is null || mtime != _mtime || now - _readAt >= MaxAge)
            {
                _value = File.ReadAllText(_path).Trim();
                _mtime = mtime;
                _readAt = now;
            }
            return _value;
        }
    }
}
