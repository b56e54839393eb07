using System.Globalization;
using System.Text.Json;
using Bora.Loading;
using Bora.Model;

namespace Bora.Cli;

/// <summary><c>bora inspect PATH [--json]</c>: architecture, config, tensor manifest, parameter count.</summary>
internal static class InspectCommand
{
    public static int Run(string[] args, TextWriter stdout)
    {
        var a = new CliArguments("inspect", args, [], ["json"]);
        if (a.Positional.Count != 1)
        {
            throw new UsageException("'inspect' takes one PATH (a .gguf file or a model folder)");
        }
        var source = ModelSource.Resolve(a.Positional[0]);
        using var store = ModelLoader.OpenWeights(source);
        var config = ModelLoader.LoadConfig(source, store);
        long parameters = store.Tensors.Sum(t => t.ElementCount);
        long bytes = store.Tensors.Sum(t => t.ByteLength);
        var arch = Architecture(config);

        if (a.Flag("json"))
        {
            using var buffer = new MemoryStream();
            using var w = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true });
            w.WriteStartObject();
            w.WriteString("path", source.Path);
            w.WriteString("layout", source.Layout.ToString());
            w.WriteString("architecture", arch);
            w.WritePropertyName("config");
            JsonSerializer.Serialize(w, config);
            w.WriteNumber("parameters", parameters);
            w.WriteNumber("bytes", bytes);
            w.WriteStartArray("tensors");
            foreach (var t in store.Tensors)
            {
                w.WriteStartObject();
                w.WriteString("name", t.Name);
                w.WriteString("dtype", t.Type.ToString());
                w.WriteStartArray("shape");
                foreach (var d in t.Shape)
                {
                    w.WriteNumberValue(d);
                }
                w.WriteEndArray();
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteEndObject();
            w.Flush();
            stdout.WriteLine(System.Text.Encoding.UTF8.GetString(buffer.ToArray()));
            return 0;
        }

        var inv = CultureInfo.InvariantCulture;
        stdout.WriteLine($"path:          {source.Path}");
        stdout.WriteLine($"layout:        {source.Layout}");
        stdout.WriteLine($"architecture:  {arch}");
        stdout.WriteLine($"tokenizer:     {source.TokenizerPath ?? "(none found)"}");
        stdout.WriteLine(string.Create(inv,
            $"config:        dim={config.Dim} layers={config.NLayers} heads={config.NHeads} kv_heads={config.NKvHeads} head_dim={config.HeadDim} hidden={config.HiddenDim} vocab={config.VocabSize}"));
        stdout.WriteLine(string.Create(inv,
            $"               norm_eps={config.NormEps:G6} rope_theta={config.RopeTheta:G9} sliding_window={config.SlidingWindow?.ToString(inv) ?? "none"} max_seq_len={config.MaxSeqLen} tied_embeddings={config.TiedEmbeddings}"));
        if (config.IsMoE)
        {
            stdout.WriteLine($"experts:       {config.NExperts}, top-{config.NExpertsPerToken} per token");
        }
        stdout.WriteLine(string.Create(inv, $"parameters:    {parameters:N0} ({parameters / 1e9:F3} B), {bytes / (1024.0 * 1024.0):F1} MiB stored"));
        stdout.WriteLine($"tensors:       {store.Tensors.Count}");
        int nameWidth = store.Tensors.Count == 0 ? 4 : store.Tensors.Max(t => t.Name.Length);
        foreach (var t in store.Tensors)
        {
            stdout.WriteLine($"  {t.Name.PadRight(nameWidth)}  {t.Type,-5}  {t.ShapeText}");
        }
        return 0;
    }

    private static string Architecture(ModelConfig c) =>
        c.IsMoE ? $"Mixtral-style sparse MoE ({c.NExperts} experts, top-{c.NExpertsPerToken})"
        : c.NKvHeads < c.NHeads ? $"Mistral-style dense, grouped-query attention ({c.NHeads}/{c.NKvHeads} heads)"
        : "Llama-style dense, multi-head attention";
}
