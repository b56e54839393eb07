using Bora.Chat;

namespace Bora.Training.Lora;

/// <summary>
/// One rendered conversation: its token ids and, per token, whether it is an assistant token (one the model
/// is trained to predict). Tokens and Trained have the same length.
/// </summary>
public sealed record ChatExample(int[] Tokens, bool[] Trained)
{
    /// <summary>Assistant tokens.</summary>
    public int TrainedCount => Trained.Count(t => t);

    /// <summary>
    /// Fills one training row of T positions: tokens[j] = Tokens[j], targets[j] = Tokens[j + 1] where that token is
    /// an assistant token, else <see cref="TrainingModel{T}.IgnoreTarget"/>; a longer example is cut after T + 1
    /// tokens, a shorter one padded with <paramref name="padToken"/> and ignored targets.
    /// </summary>
    public void Fill(Span<int> tokens, Span<int> targets, int padToken)
    {
        int t = tokens.Length;
        for (int j = 0; j < t; j++)
        {
            bool inside = j + 1 < Tokens.Length;
            tokens[j] = j < Tokens.Length ? Tokens[j] : padToken;
            targets[j] = inside && Trained[j + 1] ? Tokens[j + 1] : TrainingModel<float>.IgnoreTarget;
        }
    }
}

/// <summary>
/// Chat-format fine-tuning data: JSONL with one <c>{"messages": [...]}</c> request per line (the shape of
/// <see cref="ChatRequest.Parse"/>), rendered with the model's chat format; only assistant tokens are trained.
/// </summary>
/// <remarks>
/// Locating the assistant tokens: for assistant message i, the rendering of messages 0 .. i - 1 (a prompt that
/// asks for the reply) must be a prefix of the rendering of messages 0 .. i; the tokens after it — the reply and
/// its end of sequence (<c>&lt;/s&gt;</c>) — are the trained span. When the full conversation's rendering starts
/// with every such 0 .. i rendering, it is one example with all spans trained. Formats that move text between
/// turns (v2/v3 put the system prompt and tools before the last user message) break that; then each assistant
/// turn becomes its own example (its prefix rendering, only its span trained), as mistral-common renders them.
/// </remarks>
public static class ChatData
{
    /// <summary>Most lines read from one file (a guard against unbounded input).</summary>
    public const int MaxExamples = 1_000_000;

    /// <summary>Reads and renders a JSONL file. Blank lines are skipped.</summary>
    /// <exception cref="ChatRequestException">A line is not a valid request; the message names the file and line.</exception>
    public static List<ChatExample> Load(string path, ChatRenderer renderer)
    {
        ArgumentNullException.ThrowIfNull(renderer);
        if (!File.Exists(path))
        {
            throw new FileNotFoundException($"{path}: no such data file");
        }
        var examples = new List<ChatExample>();
        int lineNo = 0;
        foreach (var line in File.ReadLines(path))
        {
            lineNo++;
            if (string.IsNullOrWhiteSpace(line))
            {
                continue;
            }
            if (examples.Count >= MaxExamples)
            {
                throw new ChatRequestException($"{path}: more than {MaxExamples} examples");
            }
            try
            {
                examples.AddRange(Render(ChatRequest.Parse(line), renderer));
            }
            catch (ChatRequestException e)
            {
                throw new ChatRequestException($"{path} line {lineNo}: {e.Message}");
            }
        }
        if (examples.Count == 0)
        {
            throw new ChatRequestException($"{path}: no conversations (expected one JSON object with \"messages\" per line)");
        }
        return examples;
    }

    /// <summary>Renders one conversation (it must end with an assistant message) into one or more examples.</summary>
    public static List<ChatExample> Render(ChatRequest request, ChatRenderer renderer)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(renderer);
        var msgs = request.Messages;
        var full = Ids(renderer.Render(request, ValidationMode.Finetuning));
        var spans = new List<(int[] Upto, int Start)>(); // rendering of 0 .. i, start of assistant i's tokens
        for (int i = 0; i < msgs.Count; i++)
        {
            if (msgs[i].Role != ChatRole.Assistant)
            {
                continue;
            }
            if (i == 0)
            {
                throw new ChatRequestException("messages[0] is an assistant message; a fine-tuning conversation starts with a system or user message");
            }
            var upto = i == msgs.Count - 1 ? full : Ids(renderer.Render(Sub(request, i + 1), ValidationMode.Finetuning));
            var prompt = Ids(renderer.Render(Sub(request, i), ValidationMode.Test));
            if (prompt.Length > upto.Length || !upto.AsSpan(0, prompt.Length).SequenceEqual(prompt))
            {
                throw new ChatRequestException($"messages[{i}]: the conversation up to this assistant message does not render as its prompt followed by the reply, so its tokens cannot be located");
            }
            spans.Add((upto, prompt.Length));
        }
        if (spans.Count == 0)
        {
            throw new ChatRequestException("the conversation has no assistant message to train on");
        }
        if (spans.All(s => s.Upto.Length <= full.Length && full.AsSpan(0, s.Upto.Length).SequenceEqual(s.Upto)))
        {
            var trained = new bool[full.Length];
            foreach (var (upto, start) in spans)
            {
                trained.AsSpan(start, upto.Length - start).Fill(true);
            }
            return [new ChatExample(full, trained)];
        }
        return [.. spans.Select(s =>
        {
            var trained = new bool[s.Upto.Length];
            trained.AsSpan(s.Start).Fill(true);
            return new ChatExample(s.Upto, trained);
        })];
    }

    private static ChatRequest Sub(ChatRequest r, int count) => new() { Messages = [.. r.Messages.Take(count)], Tools = r.Tools };

    private static int[] Ids(RenderedPrompt p) => [.. p.Tokens.Select(t => t.Value)];
}
