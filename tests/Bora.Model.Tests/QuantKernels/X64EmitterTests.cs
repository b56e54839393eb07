using Bora.Numerics.Jit;

namespace Bora.Model.Tests.QuantKernels;

/// <summary>
/// <see cref="X64Emitter"/>'s encodings against GNU objdump's decoding of the same bytes (binutils 2.4x,
/// <c>objdump -D -b binary -m i386:x86-64</c>; the instruction each line decodes to is beside it): the register numbers
/// 8..31 (EVEX R, R', X, B, V' bits), embedded broadcasts, memory bases r8 / r9 and the backward branch.
/// </summary>
[Trait("Category", "Kernels")]
public sealed class X64EmitterTests
{
    public static TheoryData<string, string> Encodings => new()
    {
        { "vpxord %zmm0,%zmm0,%zmm0", "62 f1 7d 48 ef c0" },
        { "vpxord %zmm8,%zmm8,%zmm8", "62 51 3d 48 ef c0" },
        { "vpxord %zmm9,%zmm17,%zmm31", "62 41 75 40 ef f9" },
        { "vmovups 0x40(%rdi),%zmm24", "62 61 7c 48 10 87 40 00 00 00" },
        { "vmovups 0x3e8(%r9),%zmm3", "62 d1 7c 48 10 99 e8 03 00 00" },
        { "vmovups %zmm7,0x40(%r9)", "62 d1 7c 48 11 b9 40 00 00 00" },
        { "vpdpbusd 0x101c(%rsi){1to16},%zmm24,%zmm8", "62 72 3d 50 50 86 1c 10 00 00" },
        { "vpdpbusd 0x4(%r8){1to16},%zmm31,%zmm15", "62 52 05 50 50 b8 04 00 00 00" },
        { "vcvtdq2ps %zmm9,%zmm9", "62 51 7c 48 5b c9" },
        { "vcvtdq2ps %zmm3,%zmm20", "62 e1 7c 48 5b e3" },
        { "vcvtph2ps 0x200(%rdi),%zmm16", "62 e2 7d 48 13 87 00 02 00 00" },
        { "vbroadcastss 0xc(%rdx),%zmm17", "62 e2 7d 48 18 8a 0c 00 00 00" },
        { "vfmsub213ps 0x4(%rcx){1to16},%zmm17,%zmm8", "62 72 75 50 aa 81 04 00 00 00" },
        { "vfmadd231ps %zmm8,%zmm16,%zmm0", "62 d2 7d 40 b8 c0" },
        { "vfmadd231ps %zmm15,%zmm16,%zmm7", "62 d2 7d 40 b8 ff" },
        { "vpmulld 0x1040(%rdi),%zmm16,%zmm16", "62 e2 7d 40 40 87 40 10 00 00" },
        { "vpmulld 0x1000(%rdi),%zmm23,%zmm23", "62 e2 45 40 40 bf 00 10 00 00" },
        { "vpaddd %zmm16,%zmm8,%zmm8", "62 31 3d 48 fe c0" },
        { "vpaddd %zmm23,%zmm15,%zmm15", "62 31 05 48 fe ff" },
        { "vmulps 0x600(%rdx){1to16},%zmm9,%zmm9", "62 71 34 58 59 8a 00 06 00 00" },
        { "vfnmadd231ps 0x1c(%rcx){1to16},%zmm17,%zmm7", "62 f2 75 50 bc b9 1c 00 00 00" },
        { "vpsrld $0x8,%zmm20,%zmm24", "62 b1 3d 40 72 d4 08" },
        { "vpsrld $0x1e,%zmm9,%zmm3", "62 d1 65 48 72 d1 1e" },
        { "vpord %zmm27,%zmm24,%zmm24", "62 01 3d 40 eb c3" },
        { "vpord %zmm12,%zmm15,%zmm15", "62 51 05 48 eb fc" },
        { "vpmulld %zmm24,%zmm8,%zmm8", "62 12 3d 48 40 c0" },
        { "vpmulld %zmm23,%zmm11,%zmm11", "62 32 25 48 40 df" },
        { "vmulps %zmm24,%zmm19,%zmm24", "62 01 64 40 59 c0" },
        { "vmulps %zmm15,%zmm13,%zmm15", "62 51 14 48 59 ff" },
        { "vpslld $0x4,%zmm10,%zmm16", "62 d1 7d 40 72 f2 04" },
        { "vpslld $0x2,%zmm9,%zmm3", "62 d1 65 48 72 f1 02" },
        { "vpsrad $0x18,%zmm20,%zmm24", "62 b1 3d 40 72 e4 18" },
        { "vpsrad $0x18,%zmm24,%zmm24", "62 91 3d 40 72 e0 18" },
        { "vpandd 0x140(%rdi),%zmm2,%zmm24", "62 61 6d 48 db 87 40 01 00 00" },
        { "vpandd 0x8c0(%rdi),%zmm3,%zmm25", "62 61 65 48 db 8f c0 08 00 00" },
        { "vpternlogd $0xd8,%zmm2,%zmm8,%zmm11", "62 73 3d 48 25 da d8" },
        { "vfnmadd231ps %zmm8,%zmm28,%zmm3", "62 d2 1d 40 bc d8" },
        { "vfmadd231ps 0x0(%rsi),%zmm8,%zmm0", "62 f2 3d 48 b8 86 00 00 00 00" },
        { "vfmadd231ps 0xc0(%rsi),%zmm11,%zmm3", "62 f2 25 48 b8 9e c0 00 00 00" },
        { "vpshufb %zmm4,%zmm27,%zmm16", "62 e2 25 40 00 c4" },
        { "vpshufb %zmm21,%zmm9,%zmm3", "62 b2 35 48 00 dd" },
        { "vpmovzxbd %xmm9,%zmm4", "62 d2 7d 48 31 e1" },
        { "vpmovzxbd %xmm5,%zmm20", "62 e2 7d 48 31 e5" },
        { "vfnmadd231ps %zmm18,%zmm29,%zmm0", "62 b2 15 40 bc c2" },
        { "vpdpwssd 0x1c(%rcx){1to16},%zmm24,%zmm9", "62 72 3d 50 52 89 1c 00 00 00" },
        { "vpdpwssd 0x1010(%rcx){1to16},%zmm27,%zmm15", "62 72 25 50 52 b9 10 10 00 00" },
        { "vpternlogd $0xd8,%zmm2,%zmm15,%zmm14", "62 73 05 48 25 f2 d8" },
        { "vgf2p8affineqb $0x0,%zmm16,%zmm10,%zmm11", "62 33 ad 48 ce d8 00" },
        { "vgf2p8affineqb $0x0,%zmm18,%zmm10,%zmm14", "62 33 ad 48 ce f2 00" },
        { "prefetcht0 0x880(%rdi)", "0f 18 8f 80 08 00 00" },
        { "prefetcht0 0x40(%r9)", "41 0f 18 89 40 00 00 00" },
        { "add $0x440,%rdi", "48 81 c7 40 04 00 00" },
        { "add $0x8,%r8", "49 81 c0 08 00 00 00" },
        { "add $0xffffffffffff0000,%rsi", "48 81 c6 00 00 ff ff" },
        { "dec %r8", "49 ff c8" },
        { "vzeroupper; ret", "c5 f8 77 c3" },
    };

    [Theory]
    [MemberData(nameof(Encodings))]
    public void EncodesAsObjdumpDecodes(string instruction, string hex)
    {
        var e = new X64Emitter();
        Emit(e, instruction);
        Assert.Equal(hex, string.Join(' ', e.Code.ToArray().Select(b => b.ToString("x2", System.Globalization.CultureInfo.InvariantCulture))));
    }

    [Fact]
    public void BackwardBranchLandsOnItsTarget()
    {
        // objdump: "89: add $0x440,%rdi ... 9a: 0f 85 e9 ff ff ff  jne 0x89": the rel32 counts from the branch's end.
        var e = new X64Emitter();
        int target = e.Position;
        e.AddImm(Gpr.Rdi, 1088);
        e.Dec(Gpr.R8);
        e.JnzBack(target);
        Assert.Equal("0f 85 f0 ff ff ff", string.Join(' ', e.Code[^6..].ToArray().Select(b => b.ToString("x2", System.Globalization.CultureInfo.InvariantCulture))));
        Assert.Equal(16, e.Position); // 7 + 3 + 6 bytes: -16 = 0xfffffff0
    }

    [Fact]
    public void BasesThatNeedOtherModRmFormsAreRefused()
    {
        var e = new X64Emitter();
        Assert.Throws<ArgumentOutOfRangeException>(() => e.LoadPs(0, Gpr.Rsp, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => e.LoadPs(0, Gpr.Rbp, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => e.LoadPs(32, Gpr.Rdi, 0));
    }

    private static void Emit(X64Emitter e, string instruction)
    {
        switch (instruction)
        {
            case "vpxord %zmm0,%zmm0,%zmm0": e.Pxord(0, 0, 0); break;
            case "vpxord %zmm8,%zmm8,%zmm8": e.Pxord(8, 8, 8); break;
            case "vpxord %zmm9,%zmm17,%zmm31": e.Pxord(31, 17, 9); break;
            case "vmovups 0x40(%rdi),%zmm24": e.LoadPs(24, Gpr.Rdi, 64); break;
            case "vmovups 0x3e8(%r9),%zmm3": e.LoadPs(3, Gpr.R9, 1000); break;
            case "vmovups %zmm7,0x40(%r9)": e.StorePs(Gpr.R9, 64, 7); break;
            case "vpdpbusd 0x101c(%rsi){1to16},%zmm24,%zmm8": e.DpbusdBroadcast(8, 24, Gpr.Rsi, 4096 + 28); break;
            case "vpdpbusd 0x4(%r8){1to16},%zmm31,%zmm15": e.DpbusdBroadcast(15, 31, Gpr.R8, 4); break;
            case "vcvtdq2ps %zmm9,%zmm9": e.CvtDqToPs(9, 9); break;
            case "vcvtdq2ps %zmm3,%zmm20": e.CvtDqToPs(20, 3); break;
            case "vcvtph2ps 0x200(%rdi),%zmm16": e.CvtPhToPs(16, Gpr.Rdi, 512); break;
            case "vbroadcastss 0xc(%rdx),%zmm17": e.BroadcastSs(17, Gpr.Rdx, 12); break;
            case "vfmsub213ps 0x4(%rcx){1to16},%zmm17,%zmm8": e.FmsubBroadcast(8, 17, Gpr.Rcx, 4); break;
            case "vfmadd231ps %zmm8,%zmm16,%zmm0": e.Fmadd231(0, 16, 8); break;
            case "vfmadd231ps %zmm15,%zmm16,%zmm7": e.Fmadd231(7, 16, 15); break;
            case "vpmulld 0x1040(%rdi),%zmm16,%zmm16": e.PmulldMem(16, 16, Gpr.Rdi, 4096 + 64); break;
            case "vpmulld 0x1000(%rdi),%zmm23,%zmm23": e.PmulldMem(23, 23, Gpr.Rdi, 4096); break;
            case "vpaddd %zmm16,%zmm8,%zmm8": e.Paddd(8, 8, 16); break;
            case "vpaddd %zmm23,%zmm15,%zmm15": e.Paddd(15, 15, 23); break;
            case "vmulps 0x600(%rdx){1to16},%zmm9,%zmm9": e.MulPsBroadcast(9, 9, Gpr.Rdx, 4 * 128 * 3); break;
            case "vfnmadd231ps 0x1c(%rcx){1to16},%zmm17,%zmm7": e.FnmaddBroadcast231(7, 17, Gpr.Rcx, 28); break;
            case "vpsrld $0x8,%zmm20,%zmm24": e.PsrldImm(24, 20, 8); break;
            case "vpsrld $0x1e,%zmm9,%zmm3": e.PsrldImm(3, 9, 30); break;
            case "vpord %zmm27,%zmm24,%zmm24": e.Pord(24, 24, 27); break;
            case "vpord %zmm12,%zmm15,%zmm15": e.Pord(15, 15, 12); break;
            case "vpmulld %zmm24,%zmm8,%zmm8": e.Pmulld(8, 8, 24); break;
            case "vpmulld %zmm23,%zmm11,%zmm11": e.Pmulld(11, 11, 23); break;
            case "vmulps %zmm24,%zmm19,%zmm24": e.MulPs(24, 19, 24); break;
            case "vmulps %zmm15,%zmm13,%zmm15": e.MulPs(15, 13, 15); break;
            case "vpslld $0x4,%zmm10,%zmm16": e.PslldImm(16, 10, 4); break;
            case "vpslld $0x2,%zmm9,%zmm3": e.PslldImm(3, 9, 2); break;
            case "vpsrad $0x18,%zmm20,%zmm24": e.PsradImm(24, 20, 24); break;
            case "vpsrad $0x18,%zmm24,%zmm24": e.PsradImm(24, 24, 24); break;
            case "vpandd 0x140(%rdi),%zmm2,%zmm24": e.PanddMem(24, 2, Gpr.Rdi, 320); break;
            case "vpandd 0x8c0(%rdi),%zmm3,%zmm25": e.PanddMem(25, 3, Gpr.Rdi, 2240); break;
            case "vpternlogd $0xd8,%zmm2,%zmm8,%zmm11": e.Pternlogd(11, 8, 2, 0xD8); break;
            case "vfnmadd231ps %zmm8,%zmm28,%zmm3": e.Fnmadd231(3, 28, 8); break;
            case "vfmadd231ps 0x0(%rsi),%zmm8,%zmm0": e.Fmadd231Mem(0, 8, Gpr.Rsi, 0); break;
            case "vfmadd231ps 0xc0(%rsi),%zmm11,%zmm3": e.Fmadd231Mem(3, 11, Gpr.Rsi, 192); break;
            case "vpshufb %zmm4,%zmm27,%zmm16": e.Pshufb(16, 27, 4); break;
            case "vpshufb %zmm21,%zmm9,%zmm3": e.Pshufb(3, 9, 21); break;
            case "vpmovzxbd %xmm9,%zmm4": e.Pmovzxbd(4, 9); break;
            case "vpmovzxbd %xmm5,%zmm20": e.Pmovzxbd(20, 5); break;
            case "vfnmadd231ps %zmm18,%zmm29,%zmm0": e.Fnmadd231(0, 29, 18); break;
            case "vpdpwssd 0x1c(%rcx){1to16},%zmm24,%zmm9": e.DpwssdBroadcast(9, 24, Gpr.Rcx, 28); break;
            case "vpdpwssd 0x1010(%rcx){1to16},%zmm27,%zmm15": e.DpwssdBroadcast(15, 27, Gpr.Rcx, 4096 + 16); break;
            case "vpternlogd $0xd8,%zmm2,%zmm15,%zmm14": e.Pternlogd(14, 15, 2, 0xD8); break;
            case "vgf2p8affineqb $0x0,%zmm16,%zmm10,%zmm11": e.Gf2p8Affine(11, 10, 16); break;
            case "vgf2p8affineqb $0x0,%zmm18,%zmm10,%zmm14": e.Gf2p8Affine(14, 10, 18); break;
            case "prefetcht0 0x880(%rdi)": e.Prefetch(Gpr.Rdi, 2176); break;
            case "prefetcht0 0x40(%r9)": e.Prefetch(Gpr.R9, 64); break;
            case "add $0x440,%rdi": e.AddImm(Gpr.Rdi, 1088); break;
            case "add $0x8,%r8": e.AddImm(Gpr.R8, 8); break;
            case "add $0xffffffffffff0000,%rsi": e.AddImm(Gpr.Rsi, -65536); break;
            case "dec %r8": e.Dec(Gpr.R8); break;
            case "vzeroupper; ret": e.VzeroupperRet(); break;
            default: throw new ArgumentException(instruction);
        }
    }
}
