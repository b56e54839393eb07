namespace Bora.Generation;

/// <summary>
/// Holds back streamed text that might be the start of a stop string. Text goes in through
/// <see cref="Append"/>; what comes out is safe to show: it never contains a stop string nor ends with
/// the beginning of one. Once a stop string appears, the text before it is released and
/// <see cref="Stopped"/> turns true; the stop string and everything after it are dropped.
/// </summary>
/// <example>
/// Stop string "\nUser:". Appending "Hi\nUs" releases "Hi" and holds "\nUs"; appending "e" holds
/// "\nUse"; appending "r: x" completes the stop string: nothing more is released and Stopped is true.
/// Had the third piece been "ful", "\nUseful" would have been released.
/// </example>
internal sealed class StopStringFilter(IReadOnlyList<string> stopStrings)
{
    private string _pending = "";

    public bool Stopped { get; private set; }

    /// <summary>Adds text; returns the part that can be emitted now.</summary>
    public string Append(string text)
    {
        if (Stopped)
        {
            return "";
        }
        if (stopStrings.Count == 0)
        {
            return text;
        }
        string pending = _pending + text;
        int stopAt = -1;
        foreach (string stop in stopStrings)
        {
            int at = pending.IndexOf(stop, StringComparison.Ordinal);
            if (at >= 0 && (stopAt < 0 || at < stopAt))
            {
                stopAt = at;
            }
        }
        if (stopAt >= 0)
        {
            Stopped = true;
            _pending = "";
            return pending[..stopAt];
        }
        int hold = LongestSuffixThatStartsAStop(pending);
        _pending = pending[^hold..];
        return pending[..^hold];
    }

    /// <summary>
    /// Ends a text run, at the end of the stream or at a control token (stop strings are matched within the text
    /// between control tokens): releases what was held, which can no longer become a stop string. Appending may go on.
    /// </summary>
    public string Finish()
    {
        string rest = Stopped ? "" : _pending;
        _pending = "";
        return rest;
    }

    /// <summary>Length of the longest suffix of <paramref name="text"/> that is a proper prefix of some stop string.</summary>
    private int LongestSuffixThatStartsAStop(string text)
    {
        int best = 0;
        foreach (string stop in stopStrings)
        {
            for (int len = Math.Min(stop.Length - 1, text.Length); len > best; len--)
            {
                if (text.AsSpan(text.Length - len).SequenceEqual(stop.AsSpan(0, len)))
                {
                    best = len;
                    break;
                }
            }
        }
        return best;
    }
}
