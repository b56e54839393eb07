using System.Text.Json;

namespace Bora.Server;

/// <summary>Checks of the polymorphic request fields; each failure is a 400 naming the field.</summary>
internal static class RequestValidation
{
    /// <summary>prompt: a string, or an array of exactly one string.</summary>
    public static string PromptText(JsonElement prompt) => prompt.ValueKind switch
    {
        JsonValueKind.String => prompt.GetString()!,
        JsonValueKind.Array when prompt.GetArrayLength() == 1 && prompt[0].ValueKind == JsonValueKind.String => prompt[0].GetString()!,
        JsonValueKind.Array => throw ApiException.BadRequest("prompt arrays must hold exactly one string (batched prompts are not supported)", "prompt"),
        JsonValueKind.Undefined or JsonValueKind.Null => throw ApiException.BadRequest("prompt is required", "prompt"),
        _ => throw ApiException.BadRequest($"prompt is a JSON {prompt.ValueKind}; expected a string", "prompt"),
    };

    /// <summary>stop: absent, null, a string, or an array of strings; each non-empty and bounded.</summary>
    public static IReadOnlyList<string> StopStrings(JsonElement stop, int maxCount, int maxLength)
    {
        var list = new List<string>();
        switch (stop.ValueKind)
        {
            case JsonValueKind.Undefined or JsonValueKind.Null:
                return list;
            case JsonValueKind.String:
                list.Add(stop.GetString()!);
                break;
            case JsonValueKind.Array:
                foreach (var e in stop.EnumerateArray())
                {
                    if (e.ValueKind != JsonValueKind.String)
                    {
                        throw ApiException.BadRequest($"stop holds a JSON {e.ValueKind}; expected strings", "stop");
                    }
                    list.Add(e.GetString()!);
                }
                break;
            default:
                throw ApiException.BadRequest($"stop is a JSON {stop.ValueKind}; expected a string or an array of strings", "stop");
        }
        if (list.Count > maxCount)
        {
            throw ApiException.BadRequest($"stop has {list.Count} strings; at most {maxCount} are allowed", "stop");
        }
        foreach (var s in list)
        {
            if (s.Length == 0 || s.Length > maxLength)
            {
                throw ApiException.BadRequest($"stop strings must have 1 to {maxLength} characters; got {s.Length}", "stop");
            }
        }
        return list;
    }
}
