namespace Bora.Cli;

public static class Program
{
    public static int Main(string[] args)
    {
        Console.Error.WriteLine("bora: no commands yet");
        return args.Length == 0 ? 1 : 2;
    }
}
