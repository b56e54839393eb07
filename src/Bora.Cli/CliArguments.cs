using System.Globalization;
using Bora.Model;

namespace Bora.Cli;

/// <summary>A command-line usage error; the message says what was wrong and how to fix it.</summary>
public sealed class UsageException(string message) : Exception(message)
{
    /// <summary>Runs <paramref name="check"/>; an <see cref="ArgumentException"/> it throws becomes a usage error with the same message.</summary>
    public static void From(Action check) => From(() =>
    {
        check();
        return true;
    });

    /// <summary>Returns <paramref name="parse"/>'s value; an <see cref="ArgumentException"/> it throws becomes a usage error with the same message.</summary>
    public static T From<T>(Func<T> parse)
    {
        try
        {
            return parse();
        }
        catch (ArgumentException e)
        {
            throw new UsageException(e.Message);
        }
    }
}

/// <summary>
/// Parsed arguments of one command: positional values, <c>--name value</c> options and
/// <c>--flag</c> switches. Options are checked against the command's declared set so a typo
/// is reported instead of ignored.
/// </summary>
public sealed class CliArguments
{
    private readonly Dictionary<string, string> _options = new(StringComparer.Ordinal);
    private readonly HashSet<string> _flags = new(StringComparer.Ordinal);
    private readonly string _command;

    public IReadOnlyList<string> Positional { get; }

    /// <param name="command">Command name, for messages.</param>
    /// <param name="args">Arguments after the command name.</param>
    /// <param name="valueOptions">Options that take a value (without the leading dashes).</param>
    /// <param name="flagOptions">Options that are switches.</param>
    public CliArguments(string command, IReadOnlyList<string> args, IEnumerable<string> valueOptions, IEnumerable<string> flagOptions)
    {
        _command = command;
        var values = new HashSet<string>(valueOptions, StringComparer.Ordinal);
        var flags = new HashSet<string>(flagOptions, StringComparer.Ordinal);
        var positional = new List<string>();
        for (int i = 0; i < args.Count; i++)
        {
            var a = args[i];
            if (a == "--")
            {
                positional.AddRange(args.Skip(i + 1));
                break;
            }
            if (a.StartsWith("--", StringComparison.Ordinal) && a.Length > 2)
            {
                var name = a[2..];
                string? inlineValue = null;
                int eq = name.IndexOf('=', StringComparison.Ordinal);
                if (eq >= 0)
                {
                    inlineValue = name[(eq + 1)..];
                    name = name[..eq];
                }
                if (flags.Contains(name))
                {
                    if (inlineValue is not null)
                    {
                        throw new UsageException($"'{command}': --{name} is a switch and takes no value");
                    }
                    _flags.Add(name);
                }
                else if (values.Contains(name))
                {
                    if (inlineValue is null)
                    {
                        if (i + 1 >= args.Count)
                        {
                            throw new UsageException($"'{command}': --{name} needs a value");
                        }
                        inlineValue = args[++i];
                    }
                    _options[name] = inlineValue;
                }
                else
                {
                    var known = values.Select(v => "--" + v + " VALUE").Concat(flags.Select(f => "--" + f)).Order(StringComparer.Ordinal);
                    throw new UsageException($"'{command}': unknown option '{a}'. Known options: {string.Join(", ", known)}");
                }
            }
            else
            {
                positional.Add(a);
            }
        }
        Positional = positional;
    }

    public bool Flag(string name) => _flags.Contains(name);

    public string? Get(string name) => _options.GetValueOrDefault(name);

    public string Require(string name) =>
        Get(name) ?? throw new UsageException($"'{_command}': --{name} is required");

    public int GetInt(string name, int fallback, int min = int.MinValue, int max = int.MaxValue)
    {
        var s = Get(name);
        if (s is null)
        {
            return fallback;
        }
        if (!int.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out var v) || v < min || v > max)
        {
            throw new UsageException($"'{_command}': --{name} '{s}' is not an integer in [{min}, {max}]");
        }
        return v;
    }

    public ulong? GetULong(string name)
    {
        var s = Get(name);
        if (s is null)
        {
            return null;
        }
        if (!ulong.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out var v))
        {
            throw new UsageException($"'{_command}': --{name} '{s}' is not a non-negative integer");
        }
        return v;
    }

    /// <summary>
    /// The KV cache element type of <c>--kv-type f16|f32</c> (any case), <see cref="KvCacheType.F16"/> when absent
    /// (llama.cpp's default); any other value is a usage error naming the flag and the accepted values.
    /// </summary>
    public KvCacheType GetKvType(string name = "kv-type")
    {
        var s = Get(name);
        if (s is null)
        {
            return KvCacheType.F16;
        }
        return KvCacheTypes.TryParse(s) ?? throw new UsageException($"'{_command}': --{name} '{s}' is not a KV cache type; expected f16 or f32");
    }

    public float GetFloat(string name, float fallback)
    {
        var s = Get(name);
        if (s is null)
        {
            return fallback;
        }
        if (!float.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out var v) || !float.IsFinite(v))
        {
            throw new UsageException($"'{_command}': --{name} '{s}' is not a number");
        }
        return v;
    }
}
