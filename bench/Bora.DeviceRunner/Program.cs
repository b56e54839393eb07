using System.Diagnostics;
using System.Globalization;
using System.Reflection;
using Xunit;
using Xunit.Abstractions;
using Xunit.Sdk;

namespace Bora.DeviceRunner;

/// <summary>
/// <c>Bora.DeviceRunner TESTS.dll [TRAIT=VALUE] [NAME-PART]</c>: runs the [Fact] and [Theory] methods of the public test
/// classes in TESTS.dll (those carrying the trait, e.g. <c>Category=Kernels</c>, and whose Class.Method contains
/// NAME-PART), one theory row at a time, in this process, and prints a line per test and then "N passed, N failed,
/// N skipped". Enough for Bora's own tests (constructors take nothing or an <see cref="ITestOutputHelper"/>; data from
/// [InlineData] / [MemberData]; async tests awaited); it is no replacement for <c>dotnet test</c> where the SDK is
/// installed. Exit code 0 when nothing failed, 1 otherwise, 2 for bad arguments.
/// </summary>
public static class Program
{
    public static int Main(string[] args)
    {
        if (args.Length is < 1 or > 3 || !File.Exists(args[0]))
        {
            Console.Error.WriteLine("usage: Bora.DeviceRunner TESTS.dll [TRAIT=VALUE] [NAME-PART] (the test assembly must exist)");
            return 2;
        }
        string trait = args.Length > 1 ? args[1] : "";
        string namePart = args.Length > 2 ? args[2] : "";
        var assembly = Assembly.LoadFrom(Path.GetFullPath(args[0]));
        int passed = 0, failed = 0, skipped = 0;
        var total = Stopwatch.StartNew();
        foreach (var type in assembly.GetTypes().Where(t => t.IsClass && !t.IsAbstract && t.IsPublic && HasTrait(t, trait)))
        {
            foreach (var method in type.GetMethods(BindingFlags.Public | BindingFlags.Instance | BindingFlags.Static))
            {
                var fact = method.GetCustomAttribute<FactAttribute>();
                string name = $"{type.Name}.{method.Name}";
                if (fact is null || !name.Contains(namePart, StringComparison.Ordinal))
                {
                    continue;
                }
                if (fact.Skip is not null)
                {
                    skipped++;
                    continue;
                }
                IEnumerable<object?[]> rows = fact is TheoryAttribute
                    ? method.GetCustomAttributes<DataAttribute>().SelectMany(d => d.GetData(method))
                    : [[]];
                foreach (var row in rows)
                {
                    string id = row.Length == 0 ? name : $"{name}({string.Join(", ", row.Select(v => Convert.ToString(v, CultureInfo.InvariantCulture)))})";
                    var watch = Stopwatch.StartNew();
                    string? error = Run(type, method, row);
                    if (error is null)
                    {
                        passed++;
                        Console.WriteLine($"[PASS] {id} ({watch.Elapsed.TotalSeconds:F1} s)");
                    }
                    else
                    {
                        failed++;
                        Console.WriteLine($"[FAIL] {id}: {error}");
                    }
                }
            }
        }
        Console.WriteLine($"total {total.Elapsed.TotalSeconds:F1} s");
        Console.WriteLine($"{passed} passed, {failed} failed, {skipped} skipped");
        return failed == 0 ? 0 : 1;
    }

    /// <summary>Whether <paramref name="type"/> carries [Trait(name, value)] for "name=value" (any type when empty).</summary>
    private static bool HasTrait(Type type, string trait) =>
        trait.Length == 0 || type.GetCustomAttributesData().Any(a => a.AttributeType == typeof(TraitAttribute)
            && $"{a.ConstructorArguments[0].Value}={a.ConstructorArguments[1].Value}" == trait);

    /// <summary>One test call on a new instance; null when it passed, else the failure's type and message.</summary>
    private static string? Run(Type type, MethodInfo method, object?[] row)
    {
        try
        {
            object? instance = null;
            if (!method.IsStatic)
            {
                var constructor = type.GetConstructors().OrderBy(c => c.GetParameters().Length).First();
                instance = constructor.Invoke([.. constructor.GetParameters().Select(p => p.ParameterType == typeof(ITestOutputHelper)
                    ? new SilentOutput()
                    : throw new NotSupportedException($"constructor parameter of type {p.ParameterType}"))]);
            }
            var parameters = method.GetParameters();
            var arguments = new object?[parameters.Length];
            for (int i = 0; i < parameters.Length; i++)
            {
                arguments[i] = i < row.Length ? Coerce(row[i], parameters[i].ParameterType) : parameters[i].DefaultValue;
            }
            if (method.Invoke(instance, arguments) is Task task)
            {
                task.GetAwaiter().GetResult();
            }
            (instance as IDisposable)?.Dispose();
            return null;
        }
        catch (Exception e)
        {
            var inner = e is TargetInvocationException { InnerException: { } thrown } ? thrown : e;
            return $"{inner.GetType().Name}: {inner.Message}";
        }
    }

    /// <summary>A theory datum as the parameter's type (xunit's conversions for enums and numbers).</summary>
    private static object? Coerce(object? value, Type type) =>
        value is null || type.IsInstanceOfType(value) ? value
        : type.IsEnum ? Enum.ToObject(type, value)
        : Convert.ChangeType(value, Nullable.GetUnderlyingType(type) ?? type, CultureInfo.InvariantCulture);

    /// <summary>Test output, discarded (a failing assertion's message is what the runner prints).</summary>
    private sealed class SilentOutput : ITestOutputHelper
    {
        public void WriteLine(string message)
        {
        }

        public void WriteLine(string format, params object[] args)
        {
        }
    }
}
