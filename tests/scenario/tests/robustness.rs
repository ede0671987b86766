//! No input text and no machine answer makes the interpreter panic, and
//! every statement is counted exactly once with one output line per failure.

use host_interface::HostCallId;
use scenario::{run_file, Abort, GuestOp, GuestOutcome, Machine, PageKind, Tally};

/// A small deterministic PRNG (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// A machine that answers at random, messages with newlines included.
struct RandomMachine {
    rng: Rng,
}

impl RandomMachine {
    fn value(&mut self) -> u64 {
        *self.rng.pick(&[
            0,
            1,
            2,
            5,
            u64::MAX,
            (-3i64) as u64,
            (-1i64) as u64,
            (-22i64) as u64,
            0x8010_0000,
            self.rng.0,
        ])
    }

    fn message(&mut self) -> String {
        String::from(
            *self
                .rng
                .pick(&["out of pages", "two\nlines\r", "tab\there", ""]),
        )
    }

    fn outcome(&mut self) -> GuestOutcome {
        match self.rng.below(10) {
            0..=3 => GuestOutcome::Done(self.value()),
            4..=7 => GuestOutcome::Exit {
                reason: self.rng.next() % 9,
                ipa: if self.rng.below(2) == 0 {
                    None
                } else {
                    Some(self.value())
                },
            },
            8 => GuestOutcome::CallFailed([self.value(), self.value(), 0, 0, 0]),
            _ => GuestOutcome::Error(self.message()),
        }
    }
}

impl Machine for RandomMachine {
    fn begin_file(&mut self, _name: &str) -> Result<(), String> {
        if self.rng.below(50) == 0 {
            Err(self.message())
        } else {
            Ok(())
        }
    }
    fn end_file(&mut self) {}
    fn host_call(&mut self, regs: [u64; 7]) -> [u64; 5] {
        // HYP_FEATURES mostly meets the seed's `requires:`, so bodies run.
        if regs[0] == u64::from(HostCallId::HypFeatures.id()) && self.rng.below(4) != 0 {
            return [0, 0, 0b0011, 8, 8];
        }
        match self.rng.below(4) {
            0 | 1 => [0, 0, self.value(), self.value(), 0],
            2 => [0, self.value(), 0, 0, 0],
            _ => [
                self.value(),
                self.value(),
                self.value(),
                self.value(),
                self.value(),
            ],
        }
    }
    fn host_read(&mut self, _pa: u64) -> Result<u64, Abort> {
        if self.rng.below(3) == 0 {
            Err(Abort)
        } else {
            Ok(self.value())
        }
    }
    fn host_write(&mut self, _pa: u64, _value: u64) -> Result<(), Abort> {
        if self.rng.below(3) == 0 {
            Err(Abort)
        } else {
            Ok(())
        }
    }
    fn host_fill(&mut self, pa: u64, _len: u64, _byte: u8) -> Result<(), Abort> {
        self.host_write(pa, 0)
    }
    fn alloc(&mut self, _kind: PageKind, _pages: u64) -> Result<u64, String> {
        if self.rng.below(8) == 0 {
            Err(self.message())
        } else {
            Ok(self.value())
        }
    }
    fn hyp_pfn(&mut self) -> u64 {
        self.value()
    }
    fn pa_limit_pfn(&mut self) -> u64 {
        self.value()
    }
    fn guest_boot(&mut self, _vm: u64, _vcpu: u64, _protected: bool) -> GuestOutcome {
        self.outcome()
    }
    fn guest_op(&mut self, _vm: u64, _vcpu: u64, _op: GuestOp) -> GuestOutcome {
        self.outcome()
    }
    fn guest_resume(&mut self, _vm: u64, _vcpu: u64, _mmio_read: u64) -> GuestOutcome {
        self.outcome()
    }

    fn device_read(&mut self, _pa: u64) -> Result<u64, String> {
        if self.rng.below(3) == 0 {
            Err("no device".into())
        } else {
            Ok(self.value())
        }
    }

    fn device_write(&mut self, _pa: u64, _value: u64) -> Result<(), String> {
        if self.rng.below(3) == 0 {
            Err("no device".into())
        } else {
            Ok(())
        }
    }
}

const SEED: &str = "\
# A scenario using every statement form.
requires: fwb !mte
requires: dic

let a = ram 4
let d = coherent 2
let m = mmio 1
let u = mmio_uc 1
let h = hyp
let top = pa_limit
let g = vm protected
let n = vm normal mte
let c = vcpu g
let k = a + 1 | 2
call SHARE_HYP a 1 -> ok
call SHARE_HYP a 1 -> EPERM
call PAGE_QUERY a -> ok x2=0 x3=1 x4=0
call VM_CREATE PROTECTED a 8 -> ok as vm2
call 0xC60001FF -> NOT_SUPPORTED
call GUEST_MAP_DEVICE g d 0x90000 1 RW|WB -> EFAULT
host write a 0x1122334455667788 -> ok
host write a@0x18 7 -> abort
host read a -> 0x1122_3344_5566_7788
host read a -> abort
host fill a 2 0xA5
boot g c
guest g c read 0x8010_0000 -> 0x0
guest g c write 0x8010_0000 5 -> ok
guest g c read 0x8020_0000 -> exit MEM_FAULT 0x8020_0000
guest g c hvc MEM_SHARE 0x8010_0000 -> ok
guest g c hvc 0xC6000003 0x8030_0000 -> INVALID_PARAMETER
guest g c exec 0x9000_0000 -> exit MEM_FAULT 0x9000_0000
guest g c read 0x9000_0000 -> exit MMIO
resume g c 0x55 -> 0x55
resume g c -> ok
guest g c read 0 -> EBUSY
call VM_DESTROY g -> ok
";

/// Fragments worth splicing in: tokens of the language and troublemakers.
const FRAGMENTS: &[&str] = &[
    "->",
    "@",
    "=",
    "!",
    ":",
    "|",
    "+",
    "-",
    "#",
    "\n",
    "\r",
    "\t",
    " ",
    "\r\n",
    "0x",
    "_",
    "é",
    "\u{0}",
    "\u{7f}",
    "\u{feff}",
    "ok",
    "abort",
    "exit",
    "as",
    "let",
    "call",
    "host",
    "guest",
    "boot",
    "resume",
    "requires:",
    "read",
    "write",
    "fill",
    "exec",
    "hvc",
    "vm",
    "vcpu",
    "ram",
    "NOT_SUPPORTED",
    "INVALID_PARAMETER",
    "EPERM",
    "MMIO",
    "WFI",
    "x2=",
    "x9=",
    "0xffffffffffffffff",
    "99999999999999999999999999",
    "0x1_0000_0000_0000_0000",
    "RWX|WB",
    "PROTECTED",
    "g",
    "c",
    "a",
    "zz",
    "😀",
];

fn mutate(rng: &mut Rng, text: &str) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for _ in 0..1 + rng.below(8) {
        let at = rng.below(chars.len() + 1);
        match rng.below(6) {
            0 => {
                let end = (at + 1 + rng.below(12)).min(chars.len());
                chars.drain(at.min(end)..end);
            }
            1 | 2 => {
                let fragment = rng.pick(FRAGMENTS);
                chars.splice(at..at, fragment.chars());
            }
            3 => {
                let c = char::from_u32(rng.next() as u32 % 0x250).unwrap_or('?');
                chars.insert(at, c);
            }
            4 => {
                // Repeat a stretch, sometimes many times (overlong lines).
                let end = (at + rng.below(40)).min(chars.len());
                let stretch: Vec<char> = chars[at..end].to_vec();
                for _ in 0..1 + rng.below(30) {
                    chars.splice(at..at, stretch.iter().copied());
                }
            }
            _ => {
                let lines: Vec<String> = chars
                    .iter()
                    .collect::<String>()
                    .split('\n')
                    .map(String::from)
                    .collect();
                let (i, j) = (rng.below(lines.len()), rng.below(lines.len()));
                let mut lines = lines;
                lines.swap(i, j);
                chars = lines.join("\n").chars().collect();
            }
        }
    }
    chars.into_iter().collect()
}

/// How many statements `text` holds (SCENARIOS.md: lines other than blank,
/// comment-only, and the leading `requires:` lines).
fn statement_count(text: &str) -> u32 {
    let mut count = 0;
    for raw in text.lines() {
        let code = raw.split('#').next().unwrap_or("").trim();
        if code.is_empty() {
            continue;
        }
        let header = code
            .strip_prefix("requires")
            .is_some_and(|rest| rest.trim_start().starts_with(':'));
        if count == 0 && header {
            continue;
        }
        count += 1;
    }
    count
}

fn check(text: &str, machine: &mut RandomMachine) -> Tally {
    let mut out = String::new();
    let t: Tally = run_file("fuzz.scn", text, machine, &mut out);
    assert_eq!(
        t.passed + t.failed + t.skipped,
        statement_count(text),
        "{text:?}"
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len() as u32, t.failed, "{text:?}\n{out}");
    for line in lines {
        assert!(line.starts_with("fuzz.scn:"), "{line}");
        assert!(line.contains(": expected "), "{line}");
        assert!(line.contains(", got "), "{line}");
    }
    t
}

#[test]
fn mutated_scenarios_never_panic() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut machine = RandomMachine {
        rng: Rng(0xD1B5_4A32_D192_ED03),
    };
    // The seed itself, with requires met by chance or not.
    for _ in 0..20 {
        check(SEED, &mut machine);
    }
    let mut text = String::from(SEED);
    let mut total = Tally::default();
    for round in 0..4000 {
        // Mostly fresh mutants of the seed; sometimes mutants of mutants.
        if round % 4 != 0 {
            text = String::from(SEED);
        }
        text = mutate(&mut rng, &text);
        total += check(&text, &mut machine);
    }
    // Every path was taken.
    assert!(total.passed > 10_000, "{total:?}");
    assert!(total.failed > 10_000, "{total:?}");
    assert!(total.skipped > 1_000, "{total:?}");
}

#[test]
fn random_garbage_never_panics() {
    let mut rng = Rng(42);
    let mut machine = RandomMachine { rng: Rng(7) };
    for _ in 0..2000 {
        let mut text = String::new();
        for _ in 0..rng.below(60) {
            let fragment: &&str = rng.pick(FRAGMENTS);
            text.push_str(fragment);
            if rng.below(3) == 0 {
                text.push(' ');
            }
        }
        check(&text, &mut machine);
    }
}
