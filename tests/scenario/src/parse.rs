//! From tokens to a [`Statement`]: syntax only. Names are resolved and
//! expressions evaluated when the statement runs (see `exec`), because
//! bindings change as the file runs.

use alloc::string::String;
use alloc::vec::Vec;

use host_interface::{vm_flags, Errno, ExitReason, GuestCallId, HostCallId};

use crate::lex::{parse_number, Kind, NumberError, Token};
use crate::{Failure, PageKind};

/// Most arguments a host call or guest call takes (x1..x6).
pub(crate) const MAX_ARGS: usize = 6;

/// `+`, `-` or `|`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Add,
    Sub,
    Or,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Term<'a> {
    Value(u64),
    Name(&'a str),
}

/// Terms joined by operators, evaluated left to right.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Expr<'a> {
    pub first: Term<'a>,
    pub rest: Vec<(Op, Term<'a>)>,
}

impl Expr<'_> {
    /// Evaluates with wrapping arithmetic; `Err(name)` for an unbound name.
    pub fn eval<'n>(&'n self, lookup: &dyn Fn(&str) -> Option<u64>) -> Result<u64, &'n str> {
        let term = |t: &'n Term<'_>| match *t {
            Term::Value(v) => Ok(v),
            Term::Name(n) => lookup(n).ok_or(n),
        };
        let mut value = term(&self.first)?;
        for (op, t) in &self.rest {
            let v = term(t)?;
            value = match op {
                Op::Add => value.wrapping_add(v),
                Op::Sub => value.wrapping_sub(v),
                Op::Or => value | v,
            };
        }
        Ok(value)
    }
}

/// The named constants of SCENARIOS.md, "Syntax".
pub(crate) fn constant(name: &str) -> Option<u64> {
    use host_interface::prot::{R, W, X};
    use host_interface::MemType;
    Some(match name {
        "R" => R,
        "W" => W,
        "X" => X,
        "RW" => R | W,
        "RX" => R | X,
        "RWX" => R | W | X,
        "DEVICE" => MemType::Device.to_x5_bits(),
        "NC" => MemType::NormalNc.to_x5_bits(),
        "WB" => MemType::NormalWb.to_x5_bits(),
        "PROTECTED" => vm_flags::PROTECTED,
        "MTE" => vm_flags::MTE,
        _ => return None,
    })
}

/// Words that may not be bound, because a result or a constant is spelt so.
pub(crate) fn is_reserved(name: &str) -> bool {
    constant(name).is_some()
        || Errno::from_name(name).is_some()
        || matches!(
            name,
            "ok" | "abort" | "exit" | "as" | "NOT_SUPPORTED" | "INVALID_PARAMETER"
        )
}

/// A host address: a pfn and a byte offset in that page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Addr<'a> {
    pub pfn: Expr<'a>,
    pub offset: Option<Expr<'a>>,
}

/// What a `let` binds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Source<'a> {
    Pages(PageKind, Expr<'a>),
    Hyp,
    PaLimit,
    Vm {
        protected: bool,
        mte: bool,
    },
    Vcpu(Expr<'a>),
    /// `let n = EXPR` (a project addition).
    Value(Expr<'a>),
}

/// A function ID with the spelling it was given, for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Func<'a> {
    pub id: u64,
    pub text: &'a str,
}

/// The result a `call` expects in x0/x1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CallExpect {
    Ok,
    Errno(Errno),
    NotSupported,
}

/// What a host memory access expects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum MemExpect<'a> {
    Ok,
    Abort,
    Value(Expr<'a>),
}

/// What a guest line (`boot`, `guest`, `resume`) expects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum GuestExpect<'a> {
    /// Done: any value, or 0 for a guest call.
    Ok,
    /// Done with this value (also NOT_SUPPORTED and INVALID_PARAMETER).
    Value(Expr<'a>),
    Exit {
        reason: ExitReason,
        ipa: Option<Expr<'a>>,
    },
    /// VCPU_RUN itself failed with this errno.
    Errno(Errno),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum GuestOpSyntax<'a> {
    Read(Expr<'a>),
    Write(Expr<'a>, Expr<'a>),
    Exec(Expr<'a>),
    Hvc(Func<'a>, Vec<Expr<'a>>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Statement<'a> {
    Let {
        name: &'a str,
        source: Source<'a>,
    },
    Call {
        func: Func<'a>,
        args: Vec<Expr<'a>>,
        expect: CallExpect,
        regs: Vec<(usize, Expr<'a>)>,
        bind: Option<&'a str>,
    },
    HostRead {
        addr: Addr<'a>,
        expect: MemExpect<'a>,
    },
    HostWrite {
        addr: Addr<'a>,
        value: Expr<'a>,
        expect: MemExpect<'a>,
    },
    HostFill {
        addr: Addr<'a>,
        pages: Expr<'a>,
        byte: Expr<'a>,
        expect: MemExpect<'a>,
    },
    DeviceRead {
        addr: Addr<'a>,
        expect: MemExpect<'a>,
    },
    DeviceWrite {
        addr: Addr<'a>,
        value: Expr<'a>,
    },
    Boot {
        vm: Expr<'a>,
        vcpu: Expr<'a>,
        expect: GuestExpect<'a>,
    },
    Guest {
        vm: Expr<'a>,
        vcpu: Expr<'a>,
        op: GuestOpSyntax<'a>,
        expect: GuestExpect<'a>,
    },
    Resume {
        vm: Expr<'a>,
        vcpu: Expr<'a>,
        mmio_read: Option<Expr<'a>>,
        expect: GuestExpect<'a>,
    },
}

/// Parses one statement's tokens.
pub(crate) fn parse<'a>(tokens: &[Token<'a>]) -> Result<Statement<'a>, Failure> {
    let mut p = Parser { tokens, pos: 0 };
    let statement = p.statement()?;
    p.end()?;
    Ok(statement)
}

struct Parser<'t, 'a> {
    tokens: &'t [Token<'a>],
    pos: usize,
}

/// How a token is shown in a message: its text in backquotes, shortened.
pub(crate) fn show(token: Option<Token<'_>>) -> String {
    match token {
        None => String::from("end of line"),
        Some(t) => quote(t.text),
    }
}

/// `text` in backquotes, cut to a readable length.
pub(crate) fn quote(text: &str) -> String {
    const MAX: usize = 40;
    let mut s = String::from("`");
    for c in text.chars().take(MAX) {
        // One failure is one output line: no raw control characters.
        if c.is_control() {
            s.extend(c.escape_debug());
        } else {
            s.push(c);
        }
    }
    if text.chars().nth(MAX).is_some() {
        s.push_str("...");
    }
    s.push('`');
    s
}

impl<'a> Parser<'_, 'a> {
    fn peek(&self) -> Option<Token<'a>> {
        self.tokens.get(self.pos).copied()
    }

    fn peek_kind(&self) -> Option<Kind> {
        self.peek().map(|t| t.kind)
    }

    fn fail(&self, expected: &str) -> Failure {
        Failure::new(expected, show(self.peek()))
    }

    fn end(&self) -> Result<(), Failure> {
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(self.fail("end of line")),
        }
    }

    fn eat(&mut self, kind: Kind) -> bool {
        if self.peek_kind() == Some(kind) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, kind: Kind, shown: &str) -> Result<(), Failure> {
        if self.eat(kind) {
            Ok(())
        } else {
            Err(self.fail(shown))
        }
    }

    fn eat_word(&mut self, word: &str) -> bool {
        if self.peek().is_some_and(|t| t.is(word)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn ident(&mut self, expected: &str) -> Result<&'a str, Failure> {
        match self.peek() {
            Some(t) if t.kind == Kind::Ident => {
                self.pos += 1;
                Ok(t.text)
            }
            _ => Err(self.fail(expected)),
        }
    }

    /// Whether the next token starts a term.
    fn at_term(&self) -> bool {
        matches!(self.peek_kind(), Some(Kind::Ident | Kind::Number))
    }

    fn term(&mut self) -> Result<Term<'a>, Failure> {
        let Some(t) = self.peek() else {
            return Err(self.fail("a number or name"));
        };
        let term = match t.kind {
            Kind::Number => Term::Value(number(t)?),
            Kind::Ident => match constant(t.text) {
                Some(v) => Term::Value(v),
                None => Term::Name(t.text),
            },
            _ => return Err(self.fail("a number or name")),
        };
        self.pos += 1;
        Ok(term)
    }

    fn expr(&mut self) -> Result<Expr<'a>, Failure> {
        let first = self.term()?;
        let mut rest = Vec::new();
        loop {
            let op = match self.peek_kind() {
                Some(Kind::Plus) => Op::Add,
                Some(Kind::Minus) => Op::Sub,
                Some(Kind::Pipe) => Op::Or,
                _ => break,
            };
            self.pos += 1;
            rest.push((op, self.term()?));
        }
        Ok(Expr { first, rest })
    }

    /// Expressions up to the next token that cannot start one.
    fn args(&mut self) -> Result<Vec<Expr<'a>>, Failure> {
        let mut args = Vec::new();
        while self.at_term() {
            if args.len() == MAX_ARGS {
                return Err(self
                    .fail("at most 6 arguments")
                    .because("too many arguments"));
            }
            args.push(self.expr()?);
        }
        Ok(args)
    }

    fn arrow(&mut self) -> Result<(), Failure> {
        self.expect(Kind::Arrow, "`->`")
    }

    fn addr(&mut self) -> Result<Addr<'a>, Failure> {
        let pfn = self.expr()?;
        let offset = if self.eat(Kind::At) {
            Some(self.expr()?)
        } else {
            None
        };
        Ok(Addr { pfn, offset })
    }

    fn statement(&mut self) -> Result<Statement<'a>, Failure> {
        let Some(first) = self.peek() else {
            return Err(self.fail("a statement"));
        };
        if first.kind == Kind::Ident {
            self.pos += 1;
            match first.text {
                "let" => return self.let_statement(),
                "call" => return self.call(),
                "host" => return self.host(),
                "device" => return self.device(),
                "boot" => {
                    let (vm, vcpu) = (self.expr()?, self.expr()?);
                    let expect = self.optional_guest_result()?;
                    return Ok(Statement::Boot { vm, vcpu, expect });
                }
                "guest" => return self.guest(),
                "resume" => {
                    let (vm, vcpu) = (self.expr()?, self.expr()?);
                    let mmio_read = if self.at_term() {
                        Some(self.expr()?)
                    } else {
                        None
                    };
                    let expect = self.optional_guest_result()?;
                    return Ok(Statement::Resume {
                        vm,
                        vcpu,
                        mmio_read,
                        expect,
                    });
                }
                "requires" if self.peek_kind() == Some(Kind::Colon) => {
                    return Err(Failure::new("a statement", "`requires:`")
                        .because("requires: must come before the first statement"));
                }
                _ => {}
            }
        }
        Err(Failure::new(
            "a statement (let, call, host, device, boot, guest, resume)",
            show(Some(first)),
        )
        .because("unknown statement"))
    }

    fn let_statement(&mut self) -> Result<Statement<'a>, Failure> {
        let name = self.ident("a name")?;
        if is_reserved(name) {
            return Err(Failure::new("a name", quote(name))
                .because(alloc::format!("{name} is reserved and cannot be bound")));
        }
        self.expect(Kind::Equals, "`=`")?;
        let kind = match self.peek() {
            Some(t) if t.kind == Kind::Ident => match t.text {
                "ram" => Some(PageKind::Ram),
                "coherent" => Some(PageKind::Coherent),
                "mmio" => Some(PageKind::Mmio),
                "mmio_uc" => Some(PageKind::MmioUc),
                _ => None,
            },
            _ => None,
        };
        let source = if let Some(kind) = kind {
            self.pos += 1;
            Source::Pages(kind, self.expr()?)
        } else if self.eat_word("hyp") {
            Source::Hyp
        } else if self.eat_word("pa_limit") {
            Source::PaLimit
        } else if self.eat_word("vm") {
            let protected = if self.eat_word("protected") {
                true
            } else if self.eat_word("normal") {
                false
            } else {
                return Err(self.fail("`protected` or `normal`"));
            };
            let mte = self.eat_word("mte");
            Source::Vm { protected, mte }
        } else if self.eat_word("vcpu") {
            Source::Vcpu(self.expr()?)
        } else if self.at_term() {
            Source::Value(self.expr()?)
        } else {
            return Err(
                self.fail("ram, coherent, mmio, mmio_uc, hyp, pa_limit, vm, vcpu or a value")
            );
        };
        Ok(Statement::Let { name, source })
    }

    fn func(&mut self, host: bool) -> Result<Func<'a>, Failure> {
        let what = if host {
            "a host call name or function ID"
        } else {
            "a guest call name or function ID"
        };
        let Some(t) = self.peek() else {
            return Err(self.fail(what));
        };
        let id = match t.kind {
            Kind::Number => number(t)?,
            Kind::Ident => {
                let id = if host {
                    HostCallId::from_name(t.text).map(|c| u64::from(c.id()))
                } else {
                    GuestCallId::from_name(t.text).map(|c| u64::from(c.id()))
                };
                id.ok_or_else(|| {
                    let kind = if host { "host" } else { "guest" };
                    Failure::new(what, quote(t.text))
                        .because(alloc::format!("unknown {kind} call {}", t.text))
                })?
            }
            _ => return Err(self.fail(what)),
        };
        self.pos += 1;
        Ok(Func { id, text: t.text })
    }

    fn call(&mut self) -> Result<Statement<'a>, Failure> {
        const CALL_RESULTS: &str = "ok, an errno name or NOT_SUPPORTED";
        let func = self.func(true)?;
        let args = self.args()?;
        self.arrow()?;
        let expect = match self.peek() {
            Some(t) if t.is("ok") => CallExpect::Ok,
            Some(t) if t.is("NOT_SUPPORTED") => CallExpect::NotSupported,
            Some(t) if t.kind == Kind::Ident => match Errno::from_name(t.text) {
                Some(errno) => CallExpect::Errno(errno),
                None => return Err(self.fail(CALL_RESULTS)),
            },
            _ => return Err(self.fail(CALL_RESULTS)),
        };
        self.pos += 1;
        let mut regs = Vec::new();
        let mut bind = None;
        while let Some(t) = self.peek() {
            if t.is("as") {
                self.pos += 1;
                if bind.is_some() {
                    return Err(Failure::new("end of line", "`as`").because("only one `as NAME`"));
                }
                let name = self.ident("a name")?;
                if is_reserved(name) {
                    return Err(Failure::new("a name", quote(name))
                        .because(alloc::format!("{name} is reserved and cannot be bound")));
                }
                if expect != CallExpect::Ok {
                    return Err(Failure::new("-> ok", show(Some(t)))
                        .because("`as NAME` binds x2 of a call that succeeds: it needs `-> ok`"));
                }
                bind = Some(name);
                continue;
            }
            let reg = match t.text.strip_prefix('x').map(parse_number) {
                Some(Ok(n)) if t.kind == Kind::Ident && n <= 4 && t.text.len() == 2 => n as usize,
                _ => return Err(self.fail("x0..x4=VALUE, `as NAME` or end of line")),
            };
            self.pos += 1;
            self.expect(Kind::Equals, "`=`")?;
            regs.push((reg, self.expr()?));
        }
        Ok(Statement::Call {
            func,
            args,
            expect,
            regs,
            bind,
        })
    }

    fn host(&mut self) -> Result<Statement<'a>, Failure> {
        if self.eat_word("read") {
            let addr = self.addr()?;
            self.arrow()?;
            let expect = self.mem_result(true)?;
            Ok(Statement::HostRead { addr, expect })
        } else if self.eat_word("write") {
            let addr = self.addr()?;
            let value = self.expr()?;
            self.arrow()?;
            let expect = self.mem_result(false)?;
            Ok(Statement::HostWrite {
                addr,
                value,
                expect,
            })
        } else if self.eat_word("fill") {
            let addr = self.addr()?;
            let pages = self.expr()?;
            let byte = self.expr()?;
            let expect = if self.eat(Kind::Arrow) {
                self.mem_result(false)?
            } else {
                MemExpect::Ok
            };
            Ok(Statement::HostFill {
                addr,
                pages,
                byte,
                expect,
            })
        } else {
            Err(self.fail("read, write or fill"))
        }
    }

    fn device(&mut self) -> Result<Statement<'a>, Failure> {
        if self.eat_word("read") {
            let addr = self.addr()?;
            self.arrow()?;
            let expect = if self.eat_word("ok") {
                MemExpect::Ok
            } else if self.at_term() {
                MemExpect::Value(self.expr()?)
            } else {
                return Err(self.fail("ok or a value"));
            };
            Ok(Statement::DeviceRead { addr, expect })
        } else if self.eat_word("write") {
            let addr = self.addr()?;
            let value = self.expr()?;
            if self.eat(Kind::Arrow) && !self.eat_word("ok") {
                return Err(self.fail("ok"));
            }
            Ok(Statement::DeviceWrite { addr, value })
        } else {
            Err(self.fail("read or write"))
        }
    }

    fn mem_result(&mut self, value_allowed: bool) -> Result<MemExpect<'a>, Failure> {
        if self.eat_word("ok") {
            Ok(MemExpect::Ok)
        } else if self.eat_word("abort") {
            Ok(MemExpect::Abort)
        } else if value_allowed && self.at_term() {
            Ok(MemExpect::Value(self.expr()?))
        } else if value_allowed {
            Err(self.fail("ok, abort or a value"))
        } else {
            Err(self.fail("ok or abort"))
        }
    }

    fn guest(&mut self) -> Result<Statement<'a>, Failure> {
        let vm = self.expr()?;
        let vcpu = self.expr()?;
        let op = if self.eat_word("read") {
            GuestOpSyntax::Read(self.expr()?)
        } else if self.eat_word("write") {
            GuestOpSyntax::Write(self.expr()?, self.expr()?)
        } else if self.eat_word("exec") {
            GuestOpSyntax::Exec(self.expr()?)
        } else if self.eat_word("hvc") {
            let func = self.func(false)?;
            GuestOpSyntax::Hvc(func, self.args()?)
        } else {
            return Err(self.fail("read, write, exec or hvc"));
        };
        self.arrow()?;
        let expect = self.guest_result()?;
        Ok(Statement::Guest {
            vm,
            vcpu,
            op,
            expect,
        })
    }

    fn optional_guest_result(&mut self) -> Result<GuestExpect<'a>, Failure> {
        if self.peek().is_none() {
            return Ok(GuestExpect::Ok);
        }
        self.arrow()?;
        self.guest_result()
    }

    fn guest_result(&mut self) -> Result<GuestExpect<'a>, Failure> {
        const EXPECTED: &str =
            "ok, NOT_SUPPORTED, INVALID_PARAMETER, a value, `exit REASON [IPA]` or an errno name";
        let value = |v: u64| {
            GuestExpect::Value(Expr {
                first: Term::Value(v),
                rest: Vec::new(),
            })
        };
        let Some(t) = self.peek() else {
            return Err(self.fail(EXPECTED));
        };
        if t.kind == Kind::Ident {
            let errno = Errno::from_name(t.text);
            let simple = match t.text {
                "ok" => Some(GuestExpect::Ok),
                "NOT_SUPPORTED" => Some(value(host_interface::SMCCC_NOT_SUPPORTED)),
                "INVALID_PARAMETER" => Some(value(host_interface::SMCCC_INVALID_PARAMETER)),
                _ => errno.map(GuestExpect::Errno),
            };
            if let Some(expect) = simple {
                self.pos += 1;
                return Ok(expect);
            }
            if t.text == "exit" {
                self.pos += 1;
                let reason = match self.peek() {
                    Some(r) if r.kind == Kind::Ident => ExitReason::from_name(r.text),
                    _ => None,
                };
                let Some(reason) = reason else {
                    return Err(self.fail(
                        "an exit reason (MMIO MEM_FAULT HVC SYSTEM_EVENT INTERRUPTED WFI FATAL)",
                    ));
                };
                self.pos += 1;
                let ipa = if self.at_term() {
                    Some(self.expr()?)
                } else {
                    None
                };
                return Ok(GuestExpect::Exit { reason, ipa });
            }
        }
        if self.at_term() {
            Ok(GuestExpect::Value(self.expr()?))
        } else {
            Err(self.fail(EXPECTED))
        }
    }
}

fn number(t: Token<'_>) -> Result<u64, Failure> {
    parse_number(t.text).map_err(|e| {
        let f = Failure::new("a number", quote(t.text));
        match e {
            NumberError::Malformed => f.because("malformed number"),
            NumberError::TooLarge => f.because("number too large"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lex::lex;

    fn expr(text: &str) -> Expr<'_> {
        let tokens = lex(text).unwrap();
        let mut p = Parser {
            tokens: &tokens,
            pos: 0,
        };
        let e = p.expr().unwrap();
        assert!(p.end().is_ok(), "{text}");
        e
    }

    fn eval(text: &str) -> Result<u64, String> {
        let lookup = |n: &str| match n {
            "a" => Some(0x100),
            "b" => Some(3),
            _ => None,
        };
        expr(text).eval(&lookup).map_err(String::from)
    }

    #[test]
    fn expressions() {
        assert_eq!(eval("5"), Ok(5));
        assert_eq!(eval("a+1"), Ok(0x101));
        assert_eq!(eval("a + b - 1"), Ok(0x102));
        assert_eq!(eval("RW|WB"), Ok(0x203));
        assert_eq!(eval("RX | NC"), Ok(0x105));
        assert_eq!(eval("RWX|DEVICE"), Ok(7));
        assert_eq!(eval("R|W|X"), Ok(7));
        assert_eq!(eval("PROTECTED|MTE"), Ok(3));
        // Left to right, no precedence.
        assert_eq!(eval("1 | 2 + 4"), Ok(7));
        assert_eq!(eval("4 + 1 | 2"), Ok(7));
        assert_eq!(eval("2 - 1 | 4"), Ok(5));
        // Wrapping.
        assert_eq!(eval("0 - 1"), Ok(u64::MAX));
        assert_eq!(eval("0xffff_ffff_ffff_ffff + 2"), Ok(1));
        assert_eq!(eval("a + c"), Err(String::from("c")));
    }

    #[test]
    fn expression_syntax_errors() {
        for text in ["a +", "+ a", "a | | b", "a + ->"] {
            let tokens = lex(text).unwrap();
            let mut p = Parser {
                tokens: &tokens,
                pos: 0,
            };
            assert!(p.expr().and_then(|_| p.end()).is_err(), "{text}");
        }
    }
}
