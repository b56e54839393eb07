using System.Globalization;

namespace Bora.Bench;

/// <summary><c>--name value</c> options and <c>--flag</c> switches, checked against the known set.</summary>
internal sealed class BenchArgs
{
    private readonly Dictionary<string, string> _values = new(StringComparer.Ordinal);
    private readonly HashSet<string> _flags = new(StringComparer.Ordinal);

    public BenchArgs(string[] args, string[] valueOptions, string[] flagOptions)
    {
        for (int i = 0; i < args.Length; i++)
        {
            string name = args[i].StartsWith("--", StringComparison.Ordinal) ? args[i][2..] : throw new ArgumentException($"unexpected argument '{args[i]}'");
            if (flagOptions.Contains(name))
            {
                _flags.Add(name);
            }
            else if (valueOptions.Contains(name))
            {
                _values[name] = i + 1 < args.Length ? args[++i] : throw new ArgumentException($"--{name} needs a value");
            }
            else
            {
                throw new ArgumentException($"unknown option '{args[i]}'; known: {string.Join(", ", valueOptions.Select(v => "--" + v).Concat(flagOptions.Select(f => "--" + f)))}");
            }
        }
    }

    public bool Flag(string name) => _flags.Contains(name);

    public string? Get(string name) => _values.GetValueOrDefault(name);

    /// <summary>--kv-type f16|f32 (default f16, llama.cpp's default, which LLamaSharp's runners keep).</summary>
    public Bora.Model.KvCacheType GetKvType() => Get("kv-type") is not { } s ? Bora.Model.KvCacheType.F16
        : Bora.Model.KvCacheTypes.TryParse(s) ?? throw new ArgumentException($"--kv-type '{s}' is not a KV cache type; expected f16 or f32");

    public int GetInt(string name, int fallback, int min = 1)
    {
        var s = Get(name);
        if (s is null)
        {
            return fallback;
        }
        return int.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) && v >= min
            ? v : throw new ArgumentException($"--{name} '{s}' is not an integer >= {min}");
    }
}
