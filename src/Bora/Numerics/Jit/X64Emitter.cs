using System.Buffers.Binary;

namespace Bora.Numerics.Jit;

/// <summary>A 64-bit general-purpose register, numbered as in the x86-64 encoding (rax = 0 .. r15 = 15).</summary>
internal enum Gpr
{
    Rax = 0, Rcx = 1, Rdx = 2, Rbx = 3, Rsp = 4, Rbp = 5, Rsi = 6, Rdi = 7,
    R8 = 8, R9 = 9, R10 = 10, R11 = 11,
}

/// <summary>
/// A minimal x86-64 assembler for the few instructions of Bora's generated kernels (the AVX-512 VNNI dot products
/// that .NET 10's intrinsics do not expose on CPUs without AVX10): EVEX-encoded 512-bit instructions on zmm0..31 with
/// register or [base + disp32] operands, a few legacy integer instructions, and one backward branch. Every memory
/// operand uses a 32-bit displacement (mod = 10), so no compressed disp8 scaling is needed; rsp, rbp, r12 and r13 are
/// never a base (they would need a SIB byte or mean RIP-relative). The encodings follow the Intel SDM, volume 2,
/// section 2.7 (EVEX): 62, P0 = [R X B R' 0 m m m] (R, X, B, R' inverted), P1 = [W vvvv 1 pp] (vvvv inverted),
/// P2 = [z L'L b V' aaa] (V' inverted), opcode, ModRM, disp32. Tests check the bytes against known encodings.
/// </summary>
internal sealed class X64Emitter
{
    private readonly List<byte> _code = [];

    /// <summary>The code so far.</summary>
    public ReadOnlySpan<byte> Code => System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_code);

    /// <summary>The offset of the next instruction (a branch target).</summary>
    public int Position => _code.Count;

    /// <summary>Opcode maps of the EVEX prefix.</summary>
    private enum Map { M0F = 1, M0F38 = 2, M0F3A = 3 }

    /// <summary>The implied legacy prefix of the EVEX prefix.</summary>
    private enum Pp { None = 0, P66 = 1, PF3 = 2, PF2 = 3 }

    /// <summary>vmovups zmm, [base + disp].</summary>
    public void LoadPs(int zmm, Gpr b, int disp) => EvexMem(Map.M0F, Pp.None, 0x10, zmm, -1, b, disp, broadcast: false);

    /// <summary>vmovups [base + disp], zmm.</summary>
    public void StorePs(Gpr b, int disp, int zmm) => EvexMem(Map.M0F, Pp.None, 0x11, zmm, -1, b, disp, broadcast: false);

    /// <summary>vpxord dst, a, b.</summary>
    public void Pxord(int dst, int a, int b) => EvexReg(Map.M0F, Pp.P66, 0xEF, dst, a, b);

    /// <summary>vpdpbusd acc, u8 (zmm), s8 dword broadcast from [base + disp] ({1to16}): acc += 4-byte dot products.</summary>
    public void DpbusdBroadcast(int acc, int u8, Gpr b, int disp) => EvexMem(Map.M0F38, Pp.P66, 0x50, acc, u8, b, disp, broadcast: true);

    /// <summary>vpmulld dst, a, [base + disp] (16 int32 products, low halves).</summary>
    public void PmulldMem(int dst, int a, Gpr b, int disp) => EvexMem(Map.M0F38, Pp.P66, 0x40, dst, a, b, disp, broadcast: false);

    /// <summary>vpaddd dst, a, b.</summary>
    public void Paddd(int dst, int a, int b) => EvexReg(Map.M0F, Pp.P66, 0xFE, dst, a, b);

    /// <summary>vmulps dst, a, [base + disp]{1to16}.</summary>
    public void MulPsBroadcast(int dst, int a, Gpr b, int disp) => EvexMem(Map.M0F, Pp.None, 0x59, dst, a, b, disp, broadcast: true);

    /// <summary>vfnmadd231ps acc, a, [base + disp]{1to16}: acc = -(a * m) + acc (one rounding).</summary>
    public void FnmaddBroadcast231(int acc, int a, Gpr b, int disp) => EvexMem(Map.M0F38, Pp.P66, 0xBC, acc, a, b, disp, broadcast: true);

    /// <summary>vpandd dst, a, b.</summary>
    public void Pandd(int dst, int a, int b) => EvexReg(Map.M0F, Pp.P66, 0xDB, dst, a, b);

    /// <summary>vpsrlw dst, src, imm (each int16 lane shifted right, zeros in).</summary>
    public void PsrlwImm(int dst, int src, byte imm)
    {
        EvexReg(Map.M0F, Pp.P66, 0x71, 2, dst, src); // the shift-by-immediate group: destination in vvvv, /2 in ModRM.reg
        Byte(imm);
    }

    /// <summary>vpsrld dst, src, imm (each int32 lane shifted right, zeros in).</summary>
    public void PsrldImm(int dst, int src, byte imm)
    {
        EvexReg(Map.M0F, Pp.P66, 0x72, 2, dst, src); // the shift-by-immediate group, as vpsrlw
        Byte(imm);
    }

    /// <summary>vpslld dst, src, imm (each int32 lane shifted left, zeros in).</summary>
    public void PslldImm(int dst, int src, byte imm)
    {
        EvexReg(Map.M0F, Pp.P66, 0x72, 6, dst, src); // the shift-by-immediate group, /6
        Byte(imm);
    }

    /// <summary>vpsrad dst, src, imm (each int32 lane shifted right, copies of its sign in).</summary>
    public void PsradImm(int dst, int src, byte imm)
    {
        EvexReg(Map.M0F, Pp.P66, 0x72, 4, dst, src); // the shift-by-immediate group, /4
        Byte(imm);
    }

    /// <summary>
    /// vpternlogd dst, b, c, imm: each bit of dst = bit (4 dst + 2 b + c) of <paramref name="imm"/>, from the bits of
    /// dst, b and c at that position (0xF8: dst | (b &amp; c)).
    /// </summary>
    public void Pternlogd(int dst, int b, int c, byte imm)
    {
        EvexReg(Map.M0F3A, Pp.P66, 0x25, dst, b, c);
        Byte(imm);
    }

    /// <summary>
    /// vgf2p8affineqb dst, x, matrix, 0: each byte of x times the 8x8 bit matrix in its qword of
    /// <paramref name="matrix"/> (bit i of a result byte = parity of (byte 7 - i of the matrix) &amp; the byte), so any
    /// byte-wise bit selection in one instruction (GFNI).
    /// </summary>
    public void Gf2p8Affine(int dst, int x, int matrix)
    {
        EvexReg(Map.M0F3A, Pp.P66, 0xCE, dst, x, matrix, w: true);
        Byte(0);
    }

    /// <summary>vfnmadd231ps acc, a, b: acc = -(a b) + acc, one rounding.</summary>
    public void Fnmadd231(int acc, int a, int b) => EvexReg(Map.M0F38, Pp.P66, 0xBC, acc, a, b);

    /// <summary>vpdpwssd acc, a, [base + disp]{1to16}: each int32 lane of acc += the sum of its two int16 products with the broadcast int16 pair (AVX-512 VNNI).</summary>
    public void DpwssdBroadcast(int acc, int a, Gpr b, int disp) => EvexMem(Map.M0F38, Pp.P66, 0x52, acc, a, b, disp, broadcast: true);

    /// <summary>vpshufb dst, a, control: byte i of dst = byte (control_i &amp; 15) of a's 128-bit lane, or 0 where control_i has bit 7.</summary>
    public void Pshufb(int dst, int a, int control) => EvexReg(Map.M0F38, Pp.P66, 0x00, dst, a, control);

    /// <summary>vpmovzxbd dst, src: the 16 low bytes of src (an xmm) zero-extended to the 16 int32 lanes of dst.</summary>
    public void Pmovzxbd(int dst, int src) => EvexReg(Map.M0F38, Pp.P66, 0x31, dst, -1, src);

    /// <summary>vfmadd231ps acc, a, [base + disp]: acc = a times the 16 floats there, plus acc, one rounding.</summary>
    public void Fmadd231Mem(int acc, int a, Gpr b, int disp) => EvexMem(Map.M0F38, Pp.P66, 0xB8, acc, a, b, disp, broadcast: false);

    /// <summary>vpandd dst, a, [base + disp].</summary>
    public void PanddMem(int dst, int a, Gpr b, int disp) => EvexMem(Map.M0F, Pp.P66, 0xDB, dst, a, b, disp, broadcast: false);

    /// <summary>vpord dst, a, b.</summary>
    public void Pord(int dst, int a, int b) => EvexReg(Map.M0F, Pp.P66, 0xEB, dst, a, b);

    /// <summary>vpmulld dst, a, b (the low 32 bits of each int32 product).</summary>
    public void Pmulld(int dst, int a, int b) => EvexReg(Map.M0F38, Pp.P66, 0x40, dst, a, b);

    /// <summary>vmulps dst, a, b.</summary>
    public void MulPs(int dst, int a, int b) => EvexReg(Map.M0F, Pp.None, 0x59, dst, a, b);

    /// <summary>mov eax, imm32 then vpbroadcastd zmm, eax: a constant in every int32 lane (eax is clobbered).</summary>
    public void BroadcastConstant(int zmm, int value)
    {
        Byte(0xB8); // mov eax, imm32
        Int(value);
        EvexReg(Map.M0F38, Pp.P66, 0x7C, zmm, -1, 0); // vpbroadcastd zmm, r32 (rm = eax)
    }

    /// <summary>vcvtdq2ps dst, src.</summary>
    public void CvtDqToPs(int dst, int src) => EvexReg(Map.M0F, Pp.None, 0x5B, dst, -1, src);

    /// <summary>vcvtph2ps zmm, [base + disp] (16 halves to 16 floats).</summary>
    public void CvtPhToPs(int zmm, Gpr b, int disp) => EvexMem(Map.M0F38, Pp.P66, 0x13, zmm, -1, b, disp, broadcast: false);

    /// <summary>vbroadcastss zmm, [base + disp].</summary>
    public void BroadcastSs(int zmm, Gpr b, int disp) => EvexMem(Map.M0F38, Pp.P66, 0x18, zmm, -1, b, disp, broadcast: false);

    /// <summary>vfmsub213ps dst, a, [base + disp]{1to16}: dst = dst * a - m (one rounding).</summary>
    public void FmsubBroadcast(int dst, int a, Gpr b, int disp) => EvexMem(Map.M0F38, Pp.P66, 0xAA, dst, a, b, disp, broadcast: true);

    /// <summary>vfmadd231ps acc, a, b: acc = a * b + acc (one rounding).</summary>
    public void Fmadd231(int acc, int a, int b) => EvexReg(Map.M0F38, Pp.P66, 0xB8, acc, a, b);

    /// <summary>prefetcht0 [base + disp].</summary>
    public void Prefetch(Gpr b, int disp)
    {
        CheckBase(b);
        if ((int)b >= 8)
        {
            Byte(0x41);
        }
        Byte(0x0F);
        Byte(0x18);
        ModRmMem(1, b, disp);
    }

    /// <summary>add r, imm32 (64-bit; the immediate is sign-extended, so a negative one subtracts).</summary>
    public void AddImm(Gpr r, int imm)
    {
        Rex(w: true, r: 0, b: (int)r);
        Byte(0x81);
        Byte((byte)(0xC0 | ((int)r & 7)));
        Int(imm);
    }

    /// <summary>dec r (64-bit).</summary>
    public void Dec(Gpr r)
    {
        Rex(w: true, r: 0, b: (int)r);
        Byte(0xFF);
        Byte((byte)(0xC8 | ((int)r & 7)));
    }

    /// <summary>jnz to <paramref name="target"/> (an earlier <see cref="Position"/>), rel32.</summary>
    public void JnzBack(int target)
    {
        Byte(0x0F);
        Byte(0x85);
        Int(target - (Position + 4));
    }

    /// <summary>vzeroupper (leaving AVX-512 code) then ret.</summary>
    public void VzeroupperRet()
    {
        Byte(0xC5);
        Byte(0xF8);
        Byte(0x77);
        Byte(0xC3);
    }

    private void EvexReg(Map map, Pp pp, byte opcode, int reg, int vvvv, int rm, bool w = false)
    {
        CheckZmm(reg);
        CheckZmm(rm);
        // Register rm: its bit 3 goes to B, its bit 4 to X.
        Evex(map, pp, reg, vvvv, xBit: (rm >> 4) & 1, bBit: (rm >> 3) & 1, broadcast: false, w);
        Byte(opcode);
        Byte((byte)(0xC0 | ((reg & 7) << 3) | (rm & 7)));
    }

    private void EvexMem(Map map, Pp pp, byte opcode, int reg, int vvvv, Gpr b, int disp, bool broadcast)
    {
        CheckZmm(reg);
        CheckBase(b);
        Evex(map, pp, reg, vvvv, xBit: 0, bBit: ((int)b >> 3) & 1, broadcast);
        Byte(opcode);
        ModRmMem(reg & 7, b, disp);
    }

    private void Evex(Map map, Pp pp, int reg, int vvvv, int xBit, int bBit, bool broadcast, bool w = false)
    {
        int v = vvvv < 0 ? 0 : vvvv;
        if (vvvv >= 0)
        {
            CheckZmm(vvvv);
        }
        Byte(0x62);
        Byte((byte)((((reg >> 3) & 1) ^ 1) << 7 | ((xBit ^ 1) << 6) | ((bBit ^ 1) << 5) | ((((reg >> 4) & 1) ^ 1) << 4) | (int)map));
        Byte((byte)(((w ? 1 : 0) << 7) | ((~v & 15) << 3) | 4 | (int)pp));
        Byte((byte)((2 << 5) | ((broadcast ? 1 : 0) << 4) | ((((v >> 4) & 1) ^ 1) << 3))); // L'L = 10: 512 bits
    }

    private void ModRmMem(int reg, Gpr b, int disp)
    {
        Byte((byte)(0x80 | (reg << 3) | ((int)b & 7)));
        Int(disp);
    }

    private void Rex(bool w, int r, int b) => Byte((byte)(0x40 | (w ? 8 : 0) | (((r >> 3) & 1) << 2) | ((b >> 3) & 1)));

    private static void CheckZmm(int zmm)
    {
        if (zmm is < 0 or > 31)
        {
            throw new ArgumentOutOfRangeException(nameof(zmm), zmm, "zmm registers are 0..31");
        }
    }

    private static void CheckBase(Gpr b)
    {
        if (((int)b & 7) is 4 or 5)
        {
            throw new ArgumentOutOfRangeException(nameof(b), b, "rsp, rbp, r12 and r13 need other ModRM forms; use another base");
        }
    }

    private void Byte(byte b) => _code.Add(b);

    private void Int(int v)
    {
        Span<byte> bytes = stackalloc byte[4];
        BinaryPrimitives.WriteInt32LittleEndian(bytes, v);
        foreach (byte b in bytes)
        {
            _code.Add(b);
        }
    }
}
