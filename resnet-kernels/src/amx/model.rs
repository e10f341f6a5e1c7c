//! The software model of the AMX tile instructions, written from their definitions in the Intel
//! SDM (vol. 2, "TILELOADD", "TDPBUSD", "TDPBF16PS", ...; vol. 1, the tile configuration of
//! palette 1). Each method follows the SDM's pseudo-code: the same loops, the same order of
//! additions, the same zeroing of the parts of a tile the configuration leaves unused. What the
//! CPU would answer with #GP or #UD (a bad configuration, a tile used unconfigured, shapes that
//! do not fit, a register used twice) is a panic naming the rule.
//!
//! Not modelled: the `start_row` restart after an interrupted load (must be 0), the payload of a
//! NaN result (the model's NaNs are Rust's; the kernels' tests use no NaN inputs).

use super::{TileConfig, TileOps, Tmm, MAX_COLSB, MAX_ROWS, TILES};

/// Bytes of one tile register (16 rows x 64 bytes).
const TILE_BYTES: usize = MAX_ROWS * MAX_COLSB;

/// The tile state of one logical processor: the configuration (`None` = the initial state after
/// `tilerelease`) and the 8 tile registers.
#[derive(Clone)]
pub struct AmxModel {
    config: Option<TileConfig>,
    tiles: [[u8; TILE_BYTES]; TILES],
}

impl Default for AmxModel {
    fn default() -> Self {
        AmxModel::new()
    }
}

impl std::fmt::Debug for AmxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmxModel")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Flush to zero: an f32 denormal result becomes a zero of its sign (FTZ).
#[inline(always)]
fn ftz(x: f32) -> f32 {
    if x.is_subnormal() {
        f32::from_bits(x.to_bits() & 0x8000_0000)
    } else {
        x
    }
}

/// Denormals are zero: an f32 denormal input reads as a zero of its sign (DAZ).
#[inline(always)]
fn daz(x: f32) -> f32 {
    ftz(x)
}

/// The SDM's `make_fp32`: a bf16 bit pattern in the upper half of a dword, read with DAZ.
#[inline(always)]
fn make_fp32(bits: u16) -> f32 {
    daz(f32::from_bits((bits as u32) << 16))
}

impl AmxModel {
    /// A processor in the initial state: no configuration, tiles zero.
    pub fn new() -> AmxModel {
        AmxModel {
            config: None,
            tiles: [[0; TILE_BYTES]; TILES],
        }
    }

    /// The loaded configuration (`None` in the initial state).
    pub fn config(&self) -> Option<&TileConfig> {
        self.config.as_ref()
    }

    /// The 1024 bytes of a tile register (row `r` at `r * 64`).
    pub fn tile(&self, t: Tmm) -> &[u8; TILE_BYTES] {
        &self.tiles[t.index()]
    }

    /// `(rows, colsb)` of a configured, used tile, else the #UD the CPU raises.
    fn shape(&self, t: Tmm, what: &str) -> (usize, usize) {
        let cfg = self
            .config
            .as_ref()
            .unwrap_or_else(|| panic!("#UD: {what} with tiles not configured (no ldtilecfg)"));
        let (rows, colsb) = (cfg.rows(t), cfg.colsb(t));
        assert!(
            rows > 0 && colsb > 0,
            "#UD: {what} uses tmm{} which the configuration leaves unused",
            t.index()
        );
        (rows, colsb)
    }

    /// The dot products' checks (the SDM's exception class AMX-E4): three distinct registers,
    /// `a.colsb / 4 == b.rows`, `c.colsb == b.colsb`, `c.rows == a.rows`. Returns
    /// `(m, k groups, n, c colsb)`.
    fn dot_shapes(&self, c: Tmm, a: Tmm, b: Tmm, what: &str) -> (usize, usize, usize, usize) {
        assert!(
            c != a && c != b && a != b,
            "#UD: {what} needs three distinct tile registers"
        );
        let (c_rows, c_colsb) = self.shape(c, what);
        let (a_rows, a_colsb) = self.shape(a, what);
        let (b_rows, b_colsb) = self.shape(b, what);
        assert_eq!(
            a_colsb / 4,
            b_rows,
            "#UD: {what}: tsrc1.colsb / 4 != tsrc2.rows"
        );
        assert_eq!(
            c_colsb, b_colsb,
            "#UD: {what}: tsrcdest.colsb != tsrc2.colsb"
        );
        assert_eq!(c_rows, a_rows, "#UD: {what}: tsrcdest.rows != tsrc1.rows");
        (c_rows, a_colsb / 4, c_colsb / 4, c_colsb)
    }

    /// The SDM's `write_row_and_zero` for every row, then `zero_upper_rows`: row `m` of `dst`
    /// gets `colsb` bytes of `rows[m]`, the rest of the tile is zero.
    fn write_rows(&mut self, dst: Tmm, rows: &[[u8; MAX_COLSB]], colsb: usize) {
        let tile = &mut self.tiles[dst.index()];
        tile.fill(0);
        for (m, row) in rows.iter().enumerate() {
            tile[m * MAX_COLSB..][..colsb].copy_from_slice(&row[..colsb]);
        }
    }

    fn dword(&self, t: Tmm, row: usize, index: usize) -> [u8; 4] {
        let at = row * MAX_COLSB + 4 * index;
        self.tiles[t.index()][at..at + 4]
            .try_into()
            .expect("4 bytes")
    }
}

impl TileOps for AmxModel {
    /// Palette 0 is the initial state (as `tilerelease`); palette 1 is checked as the SDM's
    /// #GP list for `ldtilecfg` says: reserved bytes zero, rows <= 16, bytes per row <= 64, a
    /// tile either unused (0 rows and 0 bytes) or both non-zero. Every tile is zeroed.
    unsafe fn ldtilecfg(&mut self, cfg: &TileConfig) {
        let bytes = cfg.bytes();
        if cfg.palette() == 0 {
            self.config = None;
            self.tiles = [[0; TILE_BYTES]; TILES];
            return;
        }
        assert_eq!(
            cfg.palette(),
            1,
            "#GP: ldtilecfg: palette {} is not supported",
            cfg.palette()
        );
        assert_eq!(
            bytes[1], 0,
            "the model does not model start_row (restart) != 0"
        );
        let reserved = bytes[2..16]
            .iter()
            .chain(&bytes[32..48])
            .chain(&bytes[56..64]);
        assert!(
            reserved.into_iter().all(|&b| b == 0),
            "#GP: ldtilecfg: a reserved byte is not zero"
        );
        for t in 0..TILES as u8 {
            let (rows, colsb) = (cfg.rows(Tmm(t)), cfg.colsb(Tmm(t)));
            assert!(
                rows <= MAX_ROWS,
                "#GP: ldtilecfg: tmm{t} has {rows} rows (max 16)"
            );
            assert!(
                colsb <= MAX_COLSB,
                "#GP: ldtilecfg: tmm{t} has {colsb} bytes per row (max 64)"
            );
            assert_eq!(
                rows == 0,
                colsb == 0,
                "#GP: ldtilecfg: tmm{t} has {rows} rows of {colsb} bytes (both zero or neither)"
            );
        }
        self.config = Some(*cfg);
        self.tiles = [[0; TILE_BYTES]; TILES];
    }

    unsafe fn tilerelease(&mut self) {
        self.config = None;
        self.tiles = [[0; TILE_BYTES]; TILES];
    }

    unsafe fn tilezero(&mut self, dst: Tmm) {
        self.shape(dst, "tilezero");
        self.tiles[dst.index()].fill(0);
    }

    unsafe fn tileloadd(&mut self, dst: Tmm, base: *const u8, stride: usize) {
        let (rows, colsb) = self.shape(dst, "tileloadd");
        let mut data = [[0u8; MAX_COLSB]; MAX_ROWS];
        for (r, row) in data.iter_mut().enumerate().take(rows) {
            // SAFETY: the caller guarantees `rows` rows of `colsb` readable bytes at
            // base + r * stride.
            let src = unsafe { std::slice::from_raw_parts(base.add(r * stride), colsb) };
            row[..colsb].copy_from_slice(src);
        }
        self.write_rows(dst, &data[..rows], colsb);
    }

    unsafe fn tilestored(&mut self, src: Tmm, base: *mut u8, stride: usize) {
        let (rows, colsb) = self.shape(src, "tilestored");
        for r in 0..rows {
            let row = &self.tiles[src.index()][r * MAX_COLSB..][..colsb];
            // SAFETY: the caller guarantees `rows` rows of `colsb` writable bytes at
            // base + r * stride, not overlapping the model. A raw copy, not a slice: the
            // destination may be uninitialised (the kernels' C blocks are).
            unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), base.add(r * stride), colsb) };
        }
    }

    /// For each row m, group k (4 bytes of A's row, 4 rows of B) and column n:
    /// `c[m][n] += zx(a[m].byte[4k+t]) * sx(b[k].byte[4n+t])` for t = 0..4, in 32-bit
    /// wrapping arithmetic (the SDM's DPBD: no saturation).
    unsafe fn tdpbusd(&mut self, c: Tmm, a: Tmm, b: Tmm) {
        let (m_rows, k_groups, n_cols, colsb) = self.dot_shapes(c, a, b, "tdpbusd");
        let mut out = [[0u8; MAX_COLSB]; MAX_ROWS];
        for (m, row) in out.iter_mut().enumerate().take(m_rows) {
            let mut tmp = [0i32; MAX_COLSB / 4];
            for (n, v) in tmp.iter_mut().enumerate().take(n_cols) {
                *v = i32::from_le_bytes(self.dword(c, m, n));
            }
            for k in 0..k_groups {
                let x = self.dword(a, m, k);
                for (n, v) in tmp.iter_mut().enumerate().take(n_cols) {
                    let y = self.dword(b, k, n);
                    let p: [i32; 4] = std::array::from_fn(|t| x[t] as i32 * (y[t] as i8) as i32);
                    *v = v
                        .wrapping_add(p[0])
                        .wrapping_add(p[1])
                        .wrapping_add(p[2])
                        .wrapping_add(p[3]);
                }
            }
            for (n, v) in tmp.iter().enumerate().take(n_cols) {
                row[4 * n..4 * n + 4].copy_from_slice(&v.to_le_bytes());
            }
        }
        self.write_rows(c, &out[..m_rows], colsb);
    }

    /// As the SDM writes it: per row m, two f32 partial sums per column n (the even and the odd
    /// element of each pair) start at zero and take, for every pair k, one fused multiply-add
    /// (RNE, DAZ on the bf16 inputs, FTZ on the result); then `c[m][n] += even + odd`, each add
    /// RNE with DAZ/FTZ. MXCSR plays no part.
    unsafe fn tdpbf16ps(&mut self, c: Tmm, a: Tmm, b: Tmm) {
        let (m_rows, k_pairs, n_cols, colsb) = self.dot_shapes(c, a, b, "tdpbf16ps");
        let bf16 = |d: [u8; 4], half: usize| u16::from_le_bytes([d[2 * half], d[2 * half + 1]]);
        let mut out = [[0u8; MAX_COLSB]; MAX_ROWS];
        for (m, row) in out.iter_mut().enumerate().take(m_rows) {
            let mut temp = [[0f32; 2]; MAX_COLSB / 4];
            for k in 0..k_pairs {
                let x = self.dword(a, m, k);
                for (n, t) in temp.iter_mut().enumerate().take(n_cols) {
                    let y = self.dword(b, k, n);
                    for (half, acc) in t.iter_mut().enumerate() {
                        let p = make_fp32(bf16(x, half)).mul_add(make_fp32(bf16(y, half)), *acc);
                        *acc = ftz(p);
                    }
                }
            }
            for (n, t) in temp.iter().enumerate().take(n_cols) {
                let pair = ftz(t[0] + t[1]);
                let old = daz(f32::from_le_bytes(self.dword(c, m, n)));
                row[4 * n..4 * n + 4].copy_from_slice(&ftz(old + pair).to_le_bytes());
            }
        }
        self.write_rows(c, &out[..m_rows], colsb);
    }
}

impl super::TileExec for AmxModel {
    const INT8_NAME: &'static str = "amxmodel_int8_i32_32x32";
    const BF16_NAME: &'static str = "amxmodel_bf16_f32_32x32";
    const HARDWARE: bool = false;
    unsafe fn with_thread_tiles<R>(f: impl FnOnce(&mut Self) -> R) -> R {
        thread_local! {
            /// Each worker thread's modelled tile state (as each core has its own).
            static MODEL: std::cell::RefCell<AmxModel> = std::cell::RefCell::new(AmxModel::new());
        }
        MODEL.with(|m| {
            let mut model = m.borrow_mut();
            if model.config() != Some(&super::KERNEL_CONFIG) {
                // SAFETY: the model needs no CPU support.
                unsafe { model.ldtilecfg(&super::KERNEL_CONFIG) };
            }
            f(&mut model)
        })
    }
}

#[cfg(test)]
mod tests {
    //! Hand-checkable cases of each instruction, from the SDM's definitions.
    use super::*;

    const T0: Tmm = Tmm::new(0);
    const T1: Tmm = Tmm::new(1);
    const T2: Tmm = Tmm::new(2);

    fn configured(shapes: [(u8, u16); TILES]) -> AmxModel {
        let mut m = AmxModel::new();
        // SAFETY: the model needs no CPU support.
        unsafe { m.ldtilecfg(&TileConfig::palette1(shapes)) };
        m
    }

    fn load(m: &mut AmxModel, t: Tmm, bytes: &[u8], stride: usize) {
        let (rows, colsb) = m.shape(t, "test");
        assert!(bytes.len() >= (rows - 1) * stride + colsb);
        // SAFETY: `bytes` holds rows x colsb at stride (asserted above).
        unsafe { m.tileloadd(t, bytes.as_ptr(), stride) };
    }

    fn row_i32(m: &AmxModel, t: Tmm, row: usize, n: usize) -> Vec<i32> {
        (0..n)
            .map(|j| i32::from_le_bytes(m.dword(t, row, j)))
            .collect()
    }

    fn row_f32(m: &AmxModel, t: Tmm, row: usize, n: usize) -> Vec<f32> {
        (0..n)
            .map(|j| f32::from_le_bytes(m.dword(t, row, j)))
            .collect()
    }

    fn bf16_bytes(values: &[f32]) -> Vec<u8> {
        values
            .iter()
            .flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes())
            .collect()
    }

    /// A 2 x 8 load with stride 10 takes 8 bytes of each row and zeroes the rest of the tile;
    /// the store writes back exactly rows x colsb.
    #[test]
    fn load_store_respect_rows_and_colsb() {
        let mut m = configured([
            (2, 8),
            (0, 0),
            (0, 0),
            (0, 0),
            (0, 0),
            (0, 0),
            (0, 0),
            (0, 0),
        ]);
        let src: Vec<u8> = (1..=20).collect();
        load(&mut m, T0, &src, 10);
        let tile = m.tile(T0);
        assert_eq!(&tile[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&tile[64..72], &[11, 12, 13, 14, 15, 16, 17, 18]);
        assert!(tile[8..64].iter().chain(&tile[72..]).all(|&b| b == 0));
        let mut dst = vec![0xEEu8; 24];
        // SAFETY: dst holds 2 rows of 8 bytes at stride 12.
        unsafe { m.tilestored(T0, dst.as_mut_ptr(), 12) };
        let mut want = vec![0xEEu8; 24];
        want[..8].copy_from_slice(&src[..8]);
        want[12..20].copy_from_slice(&src[10..18]);
        assert_eq!(dst, want);
    }

    /// One row, one 4-byte group: `[1, 2, 255, 0] · [3, -1, -128, 127]` = 3 - 2 - 32640 + 0,
    /// added to the old value 10; unsigned A and signed B, as the VNNI-4 definition says.
    #[test]
    fn tdpbusd_by_hand() {
        let mut m = configured([
            (1, 8),
            (1, 4),
            (1, 8),
            (0, 0),
            (0, 0),
            (0, 0),
            (0, 0),
            (0, 0),
        ]);
        let c: Vec<u8> = [10i32, -5].iter().flat_map(|v| v.to_le_bytes()).collect();
        load(&mut m, T0, &c, 8);
        load(&mut m, T1, &[1, 2, 255, 0], 4);
        // Two columns: [3, -1, -128, 127] and [1, 1, 1, 1].
        load(&mut m, T2, &[3, 0xFF, 0x80, 127, 1, 1, 1, 1], 8);
        // SAFETY: the model needs no CPU support.
        unsafe { m.tdpbusd(T0, T1, T2) };
        assert_eq!(row_i32(&m, T0, 0, 2), vec![10 + 3 - 2 - 32640, -5 + 258]);
    }

    /// 2 rows x 2 groups x 1 column: the groups are summed over k, rows stay apart; the sum wraps
    /// in 32 bits (no saturation): i32::MAX + 255·127 wraps negative.
    #[test]
    fn tdpbusd_sums_over_k_and_wraps() {
        let mut m = configured([
            (2, 4),
            (2, 8),
            (2, 4),
            (0, 0),
            (0, 0),
            (0, 0),
            (0, 0),
            (0, 0),
        ]);
        let c: Vec<u8> = [i32::MAX, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
        load(&mut m, T0, &c, 4);
        // A rows: [255,0,0,0 | 0,0,0,0] and [1,1,1,1 | 2,2,2,2].
        load(
            &mut m,
            T1,
            &[255, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2],
            8,
        );
        // B rows (groups): [127, 0, 0, 0] and [1, 2, 3, 4].
        load(&mut m, T2, &[127, 0, 0, 0, 1, 2, 3, 4], 4);
        // SAFETY: the model needs no CPU support.
        unsafe { m.tdpbusd(T0, T1, T2) };
        assert_eq!(
            row_i32(&m, T0, 0, 1),
            vec![i32::MAX.wrapping_add(255 * 127)]
        );
        assert_eq!(row_i32(&m, T0, 1, 1), vec![127 + 2 * (1 + 2 + 3 + 4)]);
    }

    /// Pairs: even and odd products go to separate partial sums, added at the end, then to C.
    /// 1.5·2 + 3·0.25 over two pairs = (3 + 0.5) + (0.75 + 0.25) added to 1.
    #[test]
    fn tdpbf16ps_by_hand() {
        let mut m = configured([
            (1, 4),
            (1, 8),
            (2, 4),
            (0, 0),
            (0, 0),
            (0, 0),
            (0, 0),
            (0, 0),
        ]);
        load(&mut m, T0, &1f32.to_le_bytes(), 4);
        load(&mut m, T1, &bf16_bytes(&[1.5, 3.0, 0.5, 1.0]), 8);
        load(&mut m, T2, &bf16_bytes(&[2.0, 0.25, 1.0, 0.25]), 4);
        // SAFETY: the model needs no CPU support.
        unsafe { m.tdpbf16ps(T0, T1, T2) };
        assert_eq!(
            row_f32(&m, T0, 0, 1),
            vec![1.0 + (3.0 + 0.5) + (0.75 + 0.25)]
        );
    }

    /// The order of the SDM's additions is visible in f32: with even products 2^24 and 1 and odd
    /// products 1 and -2^24, the even sum rounds 2^24 + 1 to 2^24 (RNE), the odd sum is
    /// 1 - 2^24; their sum is 1 (the four products summed in element order would give 0).
    #[test]
    fn tdpbf16ps_keeps_even_and_odd_sums_apart() {
        let mut m = configured([
            (1, 4),
            (1, 8),
            (2, 4),
            (0, 0),
            (0, 0),
            (0, 0),
            (0, 0),
            (0, 0),
        ]);
        let big = 16_777_216f32; // 2^24, exact in bf16
        load(&mut m, T0, &0f32.to_le_bytes(), 4);
        load(&mut m, T1, &bf16_bytes(&[big, 1.0, 1.0, -big]), 8);
        load(&mut m, T2, &bf16_bytes(&[1.0, 1.0, 1.0, 1.0]), 4);
        // SAFETY: the model needs no CPU support.
        unsafe { m.tdpbf16ps(T0, T1, T2) };
        assert_eq!(row_f32(&m, T0, 0, 1), vec![1.0]);
    }

    /// DAZ and FTZ: a bf16 denormal input counts as zero; a product below the f32 normal range
    /// is flushed to zero; the old C value, if denormal, reads as zero.
    #[test]
    fn tdpbf16ps_flushes_denormals() {
        let mut m = configured([
            (1, 8),
            (1, 4),
            (1, 8),
            (0, 0),
            (0, 0),
            (0, 0),
            (0, 0),
            (0, 0),
        ]);
        let denormal_c = f32::from_bits(1);
        let c: Vec<u8> = [denormal_c, 2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        load(&mut m, T0, &c, 8);
        // A: the pair (bf16 denormal 0x0001, 2^-70).
        let tiny = 2f32.powi(-70);
        let mut a = 0x0001u16.to_le_bytes().to_vec();
        a.extend(bf16_bytes(&[tiny]));
        load(&mut m, T1, &a, 4);
        // B column 0: (1e30, 2^-70): denormal x 1e30 is 0, 2^-140 flushes to 0.
        // B column 1: (1, 2^60): 0 + 2^-10.
        let b = bf16_bytes(&[1e30, tiny, 1.0, 2f32.powi(60)]);
        load(&mut m, T2, &b, 8);
        // SAFETY: the model needs no CPU support.
        unsafe { m.tdpbf16ps(T0, T1, T2) };
        let got = row_f32(&m, T0, 0, 2);
        assert_eq!(
            got[0].to_bits(),
            0,
            "denormal C, input and product all flushed"
        );
        assert_eq!(got[1], 2.0 + 2f32.powi(-10));
    }

    #[test]
    #[should_panic(expected = "#UD: tdpbusd: tsrc1.colsb / 4 != tsrc2.rows")]
    fn mismatched_shapes_fault() {
        let mut m = configured([
            (1, 8),
            (1, 8),
            (1, 8),
            (0, 0),
            (0, 0),
            (0, 0),
            (0, 0),
            (0, 0),
        ]);
        // SAFETY: the model needs no CPU support.
        unsafe { m.tdpbusd(T0, T1, T2) };
    }

    #[test]
    #[should_panic(expected = "#UD: tilezero with tiles not configured")]
    fn unconfigured_tiles_fault() {
        let mut m = configured([(1, 8); TILES]);
        // SAFETY: the model needs no CPU support.
        unsafe {
            m.tilerelease();
            m.tilezero(T0);
        }
    }

    #[test]
    fn bad_configurations_fault() {
        let cases: [(TileConfig, &str); 4] = [
            (TileConfig::palette1([(17, 64); TILES]), "17 rows"),
            (TileConfig::palette1([(16, 65); TILES]), "65 bytes per row"),
            (
                TileConfig::palette1([(0, 4); TILES]),
                "both zero or neither",
            ),
            (
                TileConfig::from_bytes({
                    let mut b = *KERNEL.bytes();
                    b[0] = 2;
                    b
                }),
                "palette 2",
            ),
        ];
        for (cfg, message) in cases {
            let err = std::panic::catch_unwind(|| {
                let mut m = AmxModel::new();
                // SAFETY: the model needs no CPU support.
                unsafe { m.ldtilecfg(&cfg) };
            })
            .expect_err(message);
            let text = err.downcast_ref::<String>().cloned().unwrap_or_default();
            assert!(text.contains(message), "{text}");
        }
        // ldtilecfg zeroes the tiles.
        let mut m = configured([(1, 4); TILES]);
        load(&mut m, T0, &[1, 2, 3, 4], 4);
        // SAFETY: the model needs no CPU support.
        unsafe { m.ldtilecfg(&KERNEL) };
        assert!(m.tile(T0).iter().all(|&b| b == 0));
    }

    use super::super::KERNEL_CONFIG as KERNEL;
}
