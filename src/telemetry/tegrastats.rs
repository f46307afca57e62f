//! Pure parser for one line of `tegrastats` output (see `shared/research/tegrastats.md`).
//!
//! The format changes with every L4T release, so the parser is a tokenizer that classifies each
//! whitespace-separated token by its *shape*, not its position: every field except `RAM` is
//! optional, order is free, engines/temperatures/rails are kept under the name as printed, and a
//! token that fits no shape is kept in `unknown` instead of failing the line. Input is raw bytes
//! (the child's stdout is not guaranteed UTF-8) and everything kept is bounded, so a 1 MB garbage
//! line costs linear time and a few KiB of output.

use chrono::NaiveDateTime;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

/// Most CPU slots kept; a longer list is not a tegrastats list (real boards: 4 to 14).
pub const MAX_CPUS: usize = 512;
/// Most entries kept per map (engines, temperatures, rails).
pub const MAX_MAP_ENTRIES: usize = 256;
/// Most per-GPC clocks kept for the GPU.
pub const MAX_GPU_CLOCKS: usize = 64;
/// Most unknown tokens kept; the rest are only counted.
pub const MAX_UNKNOWN: usize = 64;
/// Unknown tokens are cut to this many bytes before being kept.
pub const MAX_UNKNOWN_TOKEN_BYTES: usize = 64;
/// Longest engine/rail/zone name accepted.
const MAX_NAME_BYTES: usize = 64;
/// A CPU list split by spaces (`[6%@1420, off, off]`) is re-joined over at most this many tokens.
const MAX_CPU_LIST_TOKENS: usize = 64;
/// ... and at most this many bytes.
const MAX_CPU_LIST_BYTES: usize = 16 * 1024;

/// Why a line is not a tegrastats sample.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("empty line")]
    Empty,
    #[error("not a tegrastats line: no RAM field among {tokens} tokens")]
    NoRam { tokens: usize },
}

/// `RAM used/total (lfb NxZ)`, sizes in MB.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ram {
    pub used_mb: u64,
    pub total_mb: u64,
    /// Number of free blocks of the largest free size (`lfb N`x..).
    #[serde(skip)]
    pub lfb_blocks: Option<u64>,
    /// Size of those blocks in kB (`4MB` -> 4096).
    #[serde(skip)]
    pub lfb_block_kb: Option<u64>,
}

/// `SWAP used/total (cached Z)`, sizes in MB.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Swap {
    pub used_mb: u64,
    pub total_mb: u64,
    pub cached_mb: Option<u64>,
}

/// `IRAM used/total(lfb Z)` (TX1/Nano as root), sizes in kB. Not part of the JSON contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iram {
    pub used_kb: u64,
    pub total_kb: u64,
    pub lfb_kb: Option<u64>,
}

/// `MTS fg X% bg Y%` (Denver/Carmel). Not part of the JSON contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mts {
    pub fg_pct: u32,
    pub bg_pct: u32,
}

/// A load and/or a clock: one CPU core, the EMC, or an engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoadFreq {
    pub load_pct: Option<u32>,
    pub freq_mhz: Option<u32>,
}

/// `GR3D_FREQ` / `GR3D` (+ `GR3D2_FREQ` as a second clock).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gpu {
    pub load_pct: Option<u32>,
    /// One clock per GPC as printed; `null` in JSON when the line shows no clock at all. An entry
    /// is `None` only when `GR3D2_FREQ` has a clock but `GR3D_FREQ` printed none.
    #[serde(serialize_with = "ser_clocks")]
    pub freq_mhz: Vec<Option<u32>>,
}

/// An engine's value: `off` (clock-gated) or load/clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineValue {
    Off,
    On(LoadFreq),
}

impl Serialize for EngineValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            EngineValue::Off => s.serialize_str("off"),
            EngineValue::On(v) => v.serialize(s),
        }
    }
}

/// `zone@aC[/bC]`. Serialises as the first value; `-256C` (sensor off on Orin) is `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct Temperature {
    pub celsius: Option<f64>,
    /// The undocumented second value of JetPack 7.2 (`cpu@52.9C/52.9C`).
    pub second_celsius: Option<f64>,
}

impl Serialize for Temperature {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.celsius.serialize(s)
    }
}

/// `NAME cur/avg[/max]`, all in mW (the `mW` suffix is optional before R35).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rail {
    pub cur_mw: u64,
    pub avg_mw: u64,
    pub max_mw: Option<u64>,
}

/// Name -> value in print order, serialised as a JSON object. A name printed twice (AGX Orin R35
/// prints rail `NC` twice) is kept under `NAME#2`, `NAME#3`... so no value is lost and JSON keys
/// stay unique.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedMap<V> {
    entries: Vec<(String, V)>,
}

impl<V> Default for NamedMap<V> {
    fn default() -> Self {
        NamedMap {
            entries: Vec::new(),
        }
    }
}

impl<V> NamedMap<V> {
    pub fn get(&self, name: &str) -> Option<&V> {
        self.entries.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }
    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> + '_ {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    pub fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.entries.iter().map(|(k, _)| k.as_str())
    }

    /// False when the map is full (the caller then keeps the token as unknown).
    fn insert(&mut self, name: &str, value: V) -> bool {
        if self.entries.len() >= MAX_MAP_ENTRIES {
            return false;
        }
        let mut key = name.to_owned();
        let mut n = 1;
        while self.get(&key).is_some() {
            n += 1;
            key = format!("{name}#{n}");
        }
        self.entries.push((key, value));
        true
    }
}

impl<V: Serialize> Serialize for NamedMap<V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.entries.len()))?;
        for (k, v) in &self.entries {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// Tokens not understood, cut to [`MAX_UNKNOWN_TOKEN_BYTES`], at most [`MAX_UNKNOWN`] kept. When
/// more were seen, the JSON list ends with one `"... N more"` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unknown {
    tokens: Vec<String>,
    overflow: usize,
}

impl Unknown {
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
    /// Tokens kept (not counting the overflow).
    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }
    /// Unknown tokens seen but not kept.
    pub fn overflow(&self) -> usize {
        self.overflow
    }
    fn push(&mut self, token: &[u8]) {
        if self.tokens.len() >= MAX_UNKNOWN {
            self.overflow += 1;
            return;
        }
        let cut = &token[..token.len().min(MAX_UNKNOWN_TOKEN_BYTES)];
        self.tokens.push(String::from_utf8_lossy(cut).into_owned());
    }
}

impl Serialize for Unknown {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let extra = usize::from(self.overflow > 0);
        let mut seq = s.serialize_seq(Some(self.tokens.len() + extra))?;
        for t in &self.tokens {
            seq.serialize_element(t)?;
        }
        if self.overflow > 0 {
            seq.serialize_element(&format!("... {} more", self.overflow))?;
        }
        seq.end()
    }
}

/// One parsed tegrastats line. `Serialize` gives exactly the contract's sample JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TegraSample {
    /// The `MM-DD-YYYY HH:MM:SS` prefix of JetPack 5+ (board local time, no zone).
    #[serde(serialize_with = "ser_timestamp")]
    pub timestamp: Option<NaiveDateTime>,
    pub ram: Ram,
    pub swap: Option<Swap>,
    /// One entry per CPU slot; `None` for an `off` core. `None` overall when no CPU field.
    pub cpus: Option<Vec<Option<LoadFreq>>>,
    pub emc: Option<LoadFreq>,
    pub gpu: Option<Gpu>,
    pub engines: NamedMap<EngineValue>,
    pub temps_c: NamedMap<Temperature>,
    pub rails: NamedMap<Rail>,
    pub unknown: Unknown,
    #[serde(skip)]
    pub iram: Option<Iram>,
    #[serde(skip)]
    pub mts: Option<Mts>,
    #[serde(skip)]
    pub edp_limit_mhz: Option<u32>,
}

impl TegraSample {
    /// GPU load in percent (`GR3D_FREQ x%`), when the line shows one.
    pub fn gr3d_load_pct(&self) -> Option<f64> {
        self.gpu.as_ref()?.load_pct.map(f64::from)
    }

    /// Memory controller load in percent (`EMC_FREQ x%`), when the line shows one.
    pub fn emc_load_pct(&self) -> Option<f64> {
        self.emc.as_ref()?.load_pct.map(f64::from)
    }

    /// Every rail's instantaneous power in mW, in print order.
    pub fn rails_mw(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        self.rails.iter().map(|(name, r)| (name, r.cur_mw))
    }
}

fn ser_timestamp<S: Serializer>(t: &Option<NaiveDateTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.collect_str(&t.format("%Y-%m-%dT%H:%M:%S")),
        None => s.serialize_none(),
    }
}

fn ser_clocks<S: Serializer>(clocks: &[Option<u32>], s: S) -> Result<S::Ok, S::Error> {
    if clocks.is_empty() {
        s.serialize_none()
    } else {
        clocks.serialize(s)
    }
}

/// The object `mpslabctl parse-tegrastats` prints for a line that is not a sample.
pub fn error_json(raw: &[u8], err: &ParseError) -> serde_json::Value {
    let raw = trim_line_end(raw);
    serde_json::json!({ "error": err.to_string(), "raw": String::from_utf8_lossy(raw) })
}

fn trim_line_end(mut raw: &[u8]) -> &[u8] {
    while let [rest @ .., b'\n' | b'\r'] = raw {
        raw = rest;
    }
    raw
}

/// Parses one line (with or without its `\n`). `Err` only when the line has no `RAM` field.
pub fn parse_line(line: &[u8]) -> Result<TegraSample, ParseError> {
    let mut p = Parts::default();
    let mut lx = Lexer::new(line);

    // Optional `MM-DD-YYYY HH:MM:SS` prefix; only meaningful as the first two tokens.
    let mut look = lx;
    if let (Some(d), Some(t)) = (look.next(), look.next()) {
        if let Some(ts) = parse_timestamp(d, t) {
            p.timestamp = Some(ts);
            lx = look;
        }
    }

    while let Some(tok) = lx.next() {
        if !p.field(tok, &mut lx) {
            p.unknown.push(tok);
        }
    }

    let tokens = lx.count;
    if tokens == 0 {
        return Err(ParseError::Empty);
    }
    let ram = p.ram.ok_or(ParseError::NoRam { tokens })?;
    let gpu = merge_gpu(p.gr3d, p.gr3d2);
    Ok(TegraSample {
        timestamp: p.timestamp,
        ram,
        swap: p.swap,
        cpus: p.cpus,
        emc: p.emc,
        gpu,
        engines: p.engines,
        temps_c: p.temps,
        rails: p.rails,
        unknown: p.unknown,
        iram: p.iram,
        mts: p.mts,
        edp_limit_mhz: p.edp,
    })
}

/// Whitespace tokenizer over bytes; `Copy`, so lookahead is a cheap copy.
#[derive(Clone, Copy)]
struct Lexer<'a> {
    rest: &'a [u8],
    count: usize,
}

impl<'a> Lexer<'a> {
    fn new(line: &'a [u8]) -> Self {
        Lexer {
            rest: line,
            count: 0,
        }
    }
    fn peek(&self) -> Option<&'a [u8]> {
        let mut copy = *self;
        copy.next()
    }
}

impl<'a> Iterator for Lexer<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        let start = self.rest.iter().position(|b| !b.is_ascii_whitespace())?;
        let rest = &self.rest[start..];
        let end = rest
            .iter()
            .position(|b| b.is_ascii_whitespace())
            .unwrap_or(rest.len());
        self.rest = &rest[end..];
        self.count += 1;
        Some(&rest[..end])
    }
}

/// The GPU value of `GR3D_FREQ`/`GR3D` or of `GR3D2_FREQ`.
struct GpuPart {
    load: Option<u32>,
    clocks: Vec<u32>,
}

#[derive(Default)]
struct Parts {
    timestamp: Option<NaiveDateTime>,
    ram: Option<Ram>,
    swap: Option<Swap>,
    iram: Option<Iram>,
    cpus: Option<Vec<Option<LoadFreq>>>,
    mts: Option<Mts>,
    edp: Option<u32>,
    emc: Option<LoadFreq>,
    gr3d: Option<GpuPart>,
    gr3d2: Option<GpuPart>,
    engines: NamedMap<EngineValue>,
    temps: NamedMap<Temperature>,
    rails: NamedMap<Rail>,
    unknown: Unknown,
}

impl Parts {
    /// Tries every field shape starting at `tok`; on success advances `lx` past the tokens used.
    /// Keywords are tried first but only win when their value has the keyword's shape, so the AGX
    /// Xavier rail `CPU 618/618` is a rail and `GPU@30C` a temperature (decided by value shape).
    fn field(&mut self, tok: &[u8], lx: &mut Lexer<'_>) -> bool {
        match tok {
            b"RAM" if self.ram.is_none() => {
                if let Some(ram) = try_ram(lx) {
                    self.ram = Some(ram);
                    return true;
                }
            }
            b"SWAP" if self.swap.is_none() => {
                if let Some(swap) = try_swap(lx) {
                    self.swap = Some(swap);
                    return true;
                }
            }
            b"IRAM" if self.iram.is_none() => {
                if let Some(iram) = try_iram(lx) {
                    self.iram = Some(iram);
                    return true;
                }
            }
            b"CPU" | b"cpu" if self.cpus.is_none() => {
                if let Some(cpus) = try_cpus(lx) {
                    self.cpus = Some(cpus);
                    return true;
                }
            }
            b"MTS" if self.mts.is_none() => {
                if let Some(mts) = try_mts(lx) {
                    self.mts = Some(mts);
                    return true;
                }
            }
            b"EDP" if self.edp.is_none() => {
                let mut look = *lx;
                if let (Some(b"limit"), Some(v)) = (look.next(), look.next()) {
                    if let Some(mhz) = parse_u32(v) {
                        self.edp = Some(mhz);
                        *lx = look;
                        return true;
                    }
                }
            }
            _ => {}
        }
        if let Some((zone, temp)) = parse_temperature(tok) {
            return self.temps.insert(zone, temp);
        }
        let Some(name) = as_name(tok) else {
            return false;
        };
        let Some(value) = lx.peek() else {
            return false;
        };
        if let Some(rail) = parse_rail(value) {
            if self.rails.insert(name, rail) {
                lx.next();
                return true;
            }
            return false;
        }
        let Some(engine) = parse_engine_value(value) else {
            return false;
        };
        if self.engine(name, engine) {
            lx.next();
            return true;
        }
        false
    }

    fn engine(&mut self, name: &str, v: RawEngine) -> bool {
        match name {
            "EMC_FREQ" | "EMC" if self.emc.is_none() => {
                self.emc = Some(v.load_freq());
                true
            }
            "GR3D_FREQ" | "GR3D" if self.gr3d.is_none() => {
                self.gr3d = Some(v.gpu_part());
                true
            }
            "GR3D2_FREQ" if self.gr3d2.is_none() => {
                self.gr3d2 = Some(v.gpu_part());
                true
            }
            _ => {
                let value = if v.off {
                    EngineValue::Off
                } else {
                    EngineValue::On(v.load_freq())
                };
                self.engines.insert(name, value)
            }
        }
    }
}

/// `GR3D2_FREQ` is the second GPC of the same GPU (jetson_stats #362): its clock is appended and
/// its load (always equal to GR3D's) only used when GR3D printed none.
fn merge_gpu(gr3d: Option<GpuPart>, gr3d2: Option<GpuPart>) -> Option<Gpu> {
    if gr3d.is_none() && gr3d2.is_none() {
        return None;
    }
    let mut load = None;
    let mut freq: Vec<Option<u32>> = Vec::new();
    if let Some(g) = &gr3d {
        load = g.load;
        freq.extend(g.clocks.iter().copied().map(Some));
    }
    if let Some(g2) = gr3d2 {
        load = load.or(g2.load);
        if !g2.clocks.is_empty() {
            if freq.is_empty() {
                freq.push(None);
            }
            freq.extend(g2.clocks.into_iter().map(Some));
        }
    }
    Some(Gpu {
        load_pct: load,
        freq_mhz: freq,
    })
}

/// An engine value in any of its seven printed forms.
struct RawEngine {
    off: bool,
    load: Option<u32>,
    clocks: Vec<u32>,
}

impl RawEngine {
    /// Engines other than the GPU never print several clocks; if one ever does, keep the highest
    /// (jetson_stats does the same) rather than dropping the value.
    fn load_freq(&self) -> LoadFreq {
        LoadFreq {
            load_pct: self.load,
            freq_mhz: self.clocks.iter().copied().max(),
        }
    }
    fn gpu_part(self) -> GpuPart {
        GpuPart {
            load: self.load,
            clocks: self.clocks,
        }
    }
}

/// `off` | `P%@F` | `P%@[F,..]` | `@[F,..]` | `@F` | `P%` | `F`.
fn parse_engine_value(v: &[u8]) -> Option<RawEngine> {
    if v == b"off" {
        return Some(RawEngine {
            off: true,
            load: None,
            clocks: Vec::new(),
        });
    }
    let (load, clock_part) = match v.iter().position(|&b| b == b'%') {
        Some(i) => {
            let load = parse_u32(&v[..i])?;
            match &v[i + 1..] {
                [] => (Some(load), None),
                [b'@', rest @ ..] => (Some(load), Some(rest)),
                _ => return None,
            }
        }
        None => match v {
            [b'@', rest @ ..] => (None, Some(rest)),
            _ => (None, Some(v)),
        },
    };
    let clocks = match clock_part {
        None => Vec::new(),
        Some([b'[', inner @ .., b']']) => parse_clock_list(inner)?,
        Some(c) => vec![parse_u32(c)?],
    };
    Some(RawEngine {
        off: false,
        load,
        clocks,
    })
}

fn parse_clock_list(inner: &[u8]) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    for part in inner.split(|&b| b == b',') {
        if out.len() >= MAX_GPU_CLOCKS {
            return None;
        }
        out.push(parse_u32(part)?);
    }
    Some(out)
}

/// `a[mW]/b[mW][/c[mW]]`.
fn parse_rail(v: &[u8]) -> Option<Rail> {
    let mut parts = v.split(|&b| b == b'/');
    let cur = parse_mw(parts.next()?)?;
    let avg = parse_mw(parts.next()?)?;
    let max = match parts.next() {
        Some(p) => Some(parse_mw(p)?),
        None => None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some(Rail {
        cur_mw: cur,
        avg_mw: avg,
        max_mw: max,
    })
}

fn parse_mw(v: &[u8]) -> Option<u64> {
    parse_u64(v.strip_suffix(b"mW").unwrap_or(v))
}

/// `zone@aC` or `zone@aC/bC`.
fn parse_temperature(tok: &[u8]) -> Option<(&str, Temperature)> {
    let at = tok.iter().position(|&b| b == b'@')?;
    let zone = &tok[..at];
    if zone.is_empty()
        || zone.len() > MAX_NAME_BYTES
        || !zone.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_')
    {
        return None;
    }
    let zone = std::str::from_utf8(zone).ok()?;
    let value = &tok[at + 1..];
    let (first, second) = match value.iter().position(|&b| b == b'/') {
        Some(i) => (&value[..i], Some(&value[i + 1..])),
        None => (value, None),
    };
    let first = parse_celsius(first)?;
    let second = match second {
        Some(s) => Some(parse_celsius(s)?),
        None => None,
    };
    Some((
        zone,
        Temperature {
            celsius: not_sentinel(first),
            second_celsius: second.and_then(not_sentinel),
        },
    ))
}

/// `-256C` is what R35 Orin prints for a zone whose sensor is off, not a temperature.
fn not_sentinel(c: f64) -> Option<f64> {
    (c != -256.0).then_some(c)
}

/// `[-]digits[.digits]C`.
fn parse_celsius(v: &[u8]) -> Option<f64> {
    let num = v.strip_suffix(b"C")?;
    let digits = num.strip_prefix(b"-").unwrap_or(num);
    let (int, frac) = match digits.iter().position(|&b| b == b'.') {
        Some(i) => (&digits[..i], Some(&digits[i + 1..])),
        None => (digits, None),
    };
    let ok = |d: &[u8]| !d.is_empty() && d.len() <= 9 && d.iter().all(u8::is_ascii_digit);
    if !ok(int) || !frac.is_none_or(ok) {
        return None;
    }
    std::str::from_utf8(num).ok()?.parse().ok()
}

/// Engine/rail names: upper-case letter first, then upper-case letters, digits and `_`.
fn as_name(tok: &[u8]) -> Option<&str> {
    let ok = tok.len() <= MAX_NAME_BYTES
        && tok.first().is_some_and(u8::is_ascii_uppercase)
        && tok
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_');
    if ok {
        std::str::from_utf8(tok).ok()
    } else {
        None
    }
}

/// `X/Y<unit>` with both values in that unit; returns them in kB.
fn parse_used_total_kb(v: &[u8]) -> Option<(u64, u64)> {
    let slash = v.iter().position(|&b| b == b'/')?;
    let used = parse_u64(&v[..slash])?;
    let (total, unit_kb) = split_size_unit(&v[slash + 1..])?;
    Some((used.checked_mul(unit_kb)?, total.checked_mul(unit_kb)?))
}

/// `<digits><unit>` where unit is kB/MB/GB (case-insensitive); returns (number, kB per unit).
fn split_size_unit(v: &[u8]) -> Option<(u64, u64)> {
    let digits = v.iter().take_while(|b| b.is_ascii_digit()).count();
    let unit_kb = match &v[digits..] {
        [k, b] if b.eq_ignore_ascii_case(&b'b') => match k.to_ascii_lowercase() {
            b'k' => 1,
            b'm' => 1024,
            b'g' => 1024 * 1024,
            _ => return None,
        },
        _ => return None,
    };
    Some((parse_u64(&v[..digits])?, unit_kb))
}

fn size_kb(v: &[u8]) -> Option<u64> {
    let (n, unit_kb) = split_size_unit(v)?;
    n.checked_mul(unit_kb)
}

/// `RAM X/YMB [(lfb NxZ)]`; `lx` is just past `RAM`.
fn try_ram(lx: &mut Lexer<'_>) -> Option<Ram> {
    let mut look = *lx;
    let (used_kb, total_kb) = parse_used_total_kb(look.next()?)?;
    let mut ram = Ram {
        used_mb: used_kb / 1024,
        total_mb: total_kb / 1024,
        lfb_blocks: None,
        lfb_block_kb: None,
    };
    *lx = look;
    if look.next() == Some(b"(lfb") {
        if let Some(v) = look.next().and_then(|t| t.strip_suffix(b")")) {
            if let Some(x) = v.iter().position(|&b| b == b'x') {
                if let (Some(n), Some(kb)) = (parse_u64(&v[..x]), size_kb(&v[x + 1..])) {
                    ram.lfb_blocks = Some(n);
                    ram.lfb_block_kb = Some(kb);
                    *lx = look;
                }
            }
        }
    }
    Some(ram)
}

/// `SWAP X/YMB [(cached ZMB)]`.
fn try_swap(lx: &mut Lexer<'_>) -> Option<Swap> {
    let mut look = *lx;
    let (used_kb, total_kb) = parse_used_total_kb(look.next()?)?;
    let mut swap = Swap {
        used_mb: used_kb / 1024,
        total_mb: total_kb / 1024,
        cached_mb: None,
    };
    *lx = look;
    if look.next() == Some(b"(cached") {
        if let Some(kb) = look
            .next()
            .and_then(|t| t.strip_suffix(b")"))
            .and_then(size_kb)
        {
            swap.cached_mb = Some(kb / 1024);
            *lx = look;
        }
    }
    Some(swap)
}

/// `IRAM X/YkB(lfb ZkB)` - no space before `(` on real lines, but accept one.
fn try_iram(lx: &mut Lexer<'_>) -> Option<Iram> {
    let mut look = *lx;
    let tok = look.next()?;
    let (sizes, glued_lfb) = match tok.strip_suffix(b"(lfb") {
        Some(s) => (s, true),
        None => (tok, false),
    };
    let (used_kb, total_kb) = parse_used_total_kb(sizes)?;
    let mut iram = Iram {
        used_kb,
        total_kb,
        lfb_kb: None,
    };
    *lx = look;
    if glued_lfb || look.next() == Some(b"(lfb") {
        if let Some(kb) = look
            .next()
            .and_then(|t| t.strip_suffix(b")"))
            .and_then(size_kb)
        {
            iram.lfb_kb = Some(kb);
            *lx = look;
        }
    }
    Some(iram)
}

/// `CPU [P%@F,off,..]`, `CPU [P%,..]@F` and the R28 `cpu [P%,..]@F`.
fn try_cpus(lx: &mut Lexer<'_>) -> Option<Vec<Option<LoadFreq>>> {
    let mut look = *lx;
    let first = look.next()?;
    if first.first() != Some(&b'[') {
        return None;
    }
    let joined;
    let list: &[u8] = if first.contains(&b']') {
        first
    } else {
        // Hand-edited lines put spaces inside the brackets; re-join a bounded number of tokens.
        let mut buf = first.to_vec();
        loop {
            if look.count - lx.count > MAX_CPU_LIST_TOKENS || buf.len() > MAX_CPU_LIST_BYTES {
                return None;
            }
            let t = look.next()?;
            buf.extend_from_slice(t);
            if t.contains(&b']') {
                break;
            }
        }
        joined = buf;
        &joined
    };
    let close = list.iter().position(|&b| b == b']')?;
    let shared_freq = match &list[close + 1..] {
        [] => None,
        [b'@', f @ ..] => Some(parse_u32(f)?),
        _ => return None,
    };
    let mut cpus = Vec::new();
    for entry in list[1..close].split(|&b| b == b',') {
        if cpus.len() >= MAX_CPUS {
            return None;
        }
        cpus.push(parse_core(entry, shared_freq)?);
    }
    *lx = look;
    Some(cpus)
}

/// `P%@F` | `P%` (clock from the list's `@F`) | `off` | empty (DRIVE OS doc template).
fn parse_core(entry: &[u8], shared_freq: Option<u32>) -> Option<Option<LoadFreq>> {
    if entry.is_empty() || entry == b"off" {
        return Some(None);
    }
    let pct = entry.iter().position(|&b| b == b'%')?;
    let load = parse_u32(&entry[..pct])?;
    let freq = match &entry[pct + 1..] {
        [] => shared_freq,
        [b'@', f @ ..] => Some(parse_u32(f)?),
        _ => return None,
    };
    Some(Some(LoadFreq {
        load_pct: Some(load),
        freq_mhz: freq,
    }))
}

/// `MTS fg X% bg Y%`.
fn try_mts(lx: &mut Lexer<'_>) -> Option<Mts> {
    let mut look = *lx;
    if look.next()? != b"fg" {
        return None;
    }
    let fg = parse_pct(look.next()?)?;
    if look.next()? != b"bg" {
        return None;
    }
    let bg = parse_pct(look.next()?)?;
    *lx = look;
    Some(Mts {
        fg_pct: fg,
        bg_pct: bg,
    })
}

fn parse_pct(v: &[u8]) -> Option<u32> {
    parse_u32(v.strip_suffix(b"%")?)
}

/// `MM-DD-YYYY` + `HH:MM:SS` (JetPack 5+ prefix), validated as a real date and time.
fn parse_timestamp(date: &[u8], time: &[u8]) -> Option<NaiveDateTime> {
    let num = |v: &[u8]| -> Option<u32> {
        (!v.is_empty() && v.len() <= 4 && v.iter().all(u8::is_ascii_digit))
            .then(|| parse_u32(v))
            .flatten()
    };
    let d: Vec<&[u8]> = date.splitn(4, |&b| b == b'-').collect();
    let t: Vec<&[u8]> = time.splitn(4, |&b| b == b':').collect();
    let ([mo, da, ye], [hh, mi, ss]) = (d.as_slice(), t.as_slice()) else {
        return None;
    };
    if mo.len() != 2 || da.len() != 2 || ye.len() != 4 {
        return None;
    }
    let day = chrono::NaiveDate::from_ymd_opt(num(ye)? as i32, num(mo)?, num(da)?)?;
    day.and_hms_opt(num(hh)?, num(mi)?, num(ss)?)
}

fn parse_u64(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 20 {
        return None;
    }
    v.iter().try_fold(0u64, |acc, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

fn parse_u32(v: &[u8]) -> Option<u32> {
    u32::try_from(parse_u64(v)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(line: &str) -> serde_json::Value {
        serde_json::to_value(parse_line(line.as_bytes()).unwrap()).unwrap()
    }

    #[test]
    fn contract_example_shape() {
        let v = json(
            "05-15-2025 18:30:28 RAM 6982/7620MB (lfb 2x4MB) SWAP 2640/16384MB (cached 202MB) \
             CPU [97%@1984,off] EMC_FREQ 18%@3199 GR3D_FREQ 84%@[713] NVDEC 40%@115 NVJPG off \
             cpu@65.562C tj@65.562C VDD_IN 17946mW/15710mW",
        );
        let want = serde_json::json!({
            "timestamp": "2025-05-15T18:30:28",
            "ram": {"used_mb": 6982, "total_mb": 7620},
            "swap": {"used_mb": 2640, "total_mb": 16384, "cached_mb": 202},
            "cpus": [{"load_pct": 97, "freq_mhz": 1984}, null],
            "emc": {"load_pct": 18, "freq_mhz": 3199},
            "gpu": {"load_pct": 84, "freq_mhz": [713]},
            "engines": {"NVDEC": {"load_pct": 40, "freq_mhz": 115}, "NVJPG": "off"},
            "temps_c": {"cpu": 65.562, "tj": 65.562},
            "rails": {"VDD_IN": {"cur_mw": 17946, "avg_mw": 15710, "max_mw": null}},
            "unknown": []
        });
        assert_eq!(v, want);
    }

    #[test]
    fn absent_fields_are_null_and_order_is_kept() {
        let v = json("RAM 1/2MB ZED 3/4 ALPHA 5/6");
        assert_eq!(v["timestamp"], serde_json::Value::Null);
        assert_eq!(v["swap"], serde_json::Value::Null);
        assert_eq!(v["cpus"], serde_json::Value::Null);
        assert_eq!(v["gpu"], serde_json::Value::Null);
        let keys: Vec<_> = v["rails"].as_object().unwrap().keys().cloned().collect();
        // serde_json's map sorts keys unless preserve_order is on; check the string instead.
        let s =
            serde_json::to_string(&parse_line(b"RAM 1/2MB ZED 3/4 ALPHA 5/6").unwrap()).unwrap();
        assert!(s.find("ZED").unwrap() < s.find("ALPHA").unwrap(), "{s}");
        assert_eq!(keys.len(), 2);
    }

    #[test]
    fn unknown_tokens_are_bounded() {
        let mut line = b"RAM 1/2MB".to_vec();
        for i in 0..1000 {
            line.extend_from_slice(format!(" junk{i}").as_bytes());
        }
        let s = parse_line(&line).unwrap();
        assert_eq!(s.unknown.tokens().len(), MAX_UNKNOWN);
        assert_eq!(s.unknown.overflow(), 1000 - MAX_UNKNOWN);
        let v = serde_json::to_value(&s).unwrap();
        let list = v["unknown"].as_array().unwrap();
        assert_eq!(
            list.last().unwrap(),
            &format!("... {} more", 1000 - MAX_UNKNOWN)
        );
    }

    #[test]
    fn invalid_timestamp_is_not_a_timestamp() {
        let s = parse_line(b"13-45-2025 25:00:00 RAM 1/2MB").unwrap();
        assert_eq!(s.timestamp, None);
        assert_eq!(s.unknown.tokens(), ["13-45-2025", "25:00:00"]);
    }

    #[test]
    fn error_json_keeps_raw_line() {
        let err = parse_line(b"hello \xff world\n").unwrap_err();
        let v = error_json(b"hello \xff world\n", &err);
        assert_eq!(v["raw"], "hello \u{fffd} world");
        assert!(v["error"].as_str().unwrap().contains("no RAM"));
        assert_eq!(parse_line(b"  \r\n"), Err(ParseError::Empty));
    }
}
