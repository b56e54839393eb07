namespace Bora.Model.Tests;

public class SmokeTests
{
    [Fact]
    public void TestDataFolderIsFound() => Assert.True(Directory.Exists(TestPaths.SharedTestData) || TestPaths.SharedTestData.Length > 0);
}
