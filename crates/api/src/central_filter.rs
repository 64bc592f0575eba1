//! IoT Central's device-list options `filter` and `orderby` (no `$`, as Microsoft's how-to
//! "Use ODATA filters" writes them): parsed once into a small predicate and ordering that the
//! list route applies while paging.
//!
//! The grammar is exactly the documented one: comparisons `eq ne lt le gt ge` between a device
//! field and a literal (`'text'` with `''` for a quote, `true`, `false`), `contains(field,
//! 'text')`, joined with `and` / `or` (`and` binds tighter) and grouped with parentheses. Fields:
//! `id`, `displayName`, `template` (strings), `enabled`, `provisioned`, `simulated` (booleans),
//! matched case-insensitively because the reference's own example writes `Enabled ne true`.
//! `scopes` (organizations) is refused: muster has no organizations, and answering as if every
//! device matched or none did would mislead. String comparisons are ordinal and case-sensitive.
//! `orderby` sorts on `displayName` only, ascending unless `desc` follows; ties go by id so pages
//! never overlap.

use crate::error::ApiError;

/// Longest `filter` accepted; a longer one is refused rather than evaluated.
const MAX_FILTER_LEN: usize = 4096;
/// Deepest parenthesis nesting accepted, so no input can exhaust the stack.
const MAX_DEPTH: usize = 32;

/// What a filter can see of a device, as the Central device shape shows it.
#[derive(Debug, Clone, Copy)]
pub struct DeviceFields<'a> {
    pub id: &'a str,
    pub display_name: &'a str,
    pub template: Option<&'a str>,
    pub enabled: bool,
    pub provisioned: bool,
    pub simulated: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StrField {
    Id,
    DisplayName,
    Template,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BoolField {
    Enabled,
    Provisioned,
    Simulated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Str(StrField),
    Bool(BoolField),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A parsed `filter`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceFilter {
    And(Box<DeviceFilter>, Box<DeviceFilter>),
    Or(Box<DeviceFilter>, Box<DeviceFilter>),
    StrCmp(StrFieldCmp),
    BoolCmp(BoolFieldCmp),
    Contains(StrFieldContains),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrFieldCmp {
    field: StrField,
    op: Op,
    value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoolFieldCmp {
    field: BoolField,
    equal: bool,
    value: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrFieldContains {
    field: StrField,
    needle: String,
}

impl DeviceFilter {
    /// Whether the device is kept.
    pub fn keeps(&self, d: &DeviceFields<'_>) -> bool {
        match self {
            DeviceFilter::And(a, b) => a.keeps(d) && b.keeps(d),
            DeviceFilter::Or(a, b) => a.keeps(d) || b.keeps(d),
            DeviceFilter::BoolCmp(c) => (bool_of(d, c.field) == c.value) == c.equal,
            DeviceFilter::Contains(c) => str_of(d, c.field).is_some_and(|s| s.contains(&c.needle)),
            DeviceFilter::StrCmp(c) => match str_of(d, c.field) {
                // A device without a template equals no text and differs from every text.
                None => c.op == Op::Ne,
                Some(s) => {
                    let o = s.cmp(c.value.as_str());
                    match c.op {
                        Op::Eq => o.is_eq(),
                        Op::Ne => o.is_ne(),
                        Op::Lt => o.is_lt(),
                        Op::Le => o.is_le(),
                        Op::Gt => o.is_gt(),
                        Op::Ge => o.is_ge(),
                    }
                }
            },
        }
    }
}

impl DeviceFilter {
    /// The first field the filter names that only devices have (`template`, `enabled`,
    /// `provisioned`, `simulated`), so a device-group list can refuse it: a group has an id and a
    /// display name only.
    pub fn device_only_field(&self) -> Option<&'static str> {
        match self {
            DeviceFilter::And(a, b) | DeviceFilter::Or(a, b) => {
                a.device_only_field().or_else(|| b.device_only_field())
            }
            DeviceFilter::StrCmp(StrFieldCmp { field, .. })
            | DeviceFilter::Contains(StrFieldContains { field, .. }) => {
                (*field == StrField::Template).then_some("template")
            }
            DeviceFilter::BoolCmp(c) => Some(match c.field {
                BoolField::Enabled => "enabled",
                BoolField::Provisioned => "provisioned",
                BoolField::Simulated => "simulated",
            }),
        }
    }
}

fn str_of<'a>(d: &DeviceFields<'a>, f: StrField) -> Option<&'a str> {
    match f {
        StrField::Id => Some(d.id),
        StrField::DisplayName => Some(d.display_name),
        StrField::Template => d.template,
    }
}

fn bool_of(d: &DeviceFields<'_>, f: BoolField) -> bool {
    match f {
        BoolField::Enabled => d.enabled,
        BoolField::Provisioned => d.provisioned,
        BoolField::Simulated => d.simulated,
    }
}

/// The parsed `orderby`: on `displayName`, descending or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderBy {
    pub desc: bool,
}

fn bad(param: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(param, message)
}

const FIELDS_HELP: &str = "the device list filters on id, displayName, template, enabled, provisioned and simulated, e.g. filter=contains(displayName, 'thermostat') and enabled eq true";

/// Parses `orderby`; empty means none.
pub fn parse_orderby(raw: &str) -> Result<Option<OrderBy>, ApiError> {
    let words: Vec<&str> = raw.split_whitespace().collect();
    let (field, dir) = match words.as_slice() {
        [] => return Ok(None),
        [f] => (*f, None),
        [f, d] => (*f, Some(*d)),
        _ => {
            return Err(bad(
                "orderby",
                "takes one field and an optional direction, e.g. orderby=displayName desc",
            ))
        }
    };
    if !field.eq_ignore_ascii_case("displayName") {
        return Err(bad(
            "orderby",
            format!(
                "muster (like IoT Central) sorts the device list on displayName only, got {}",
                crate::json::quote(field)
            ),
        ));
    }
    let desc = match dir {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(other) => {
            return Err(bad(
                "orderby",
                format!(
                    "direction must be asc or desc, got {}",
                    crate::json::quote(other)
                ),
            ))
        }
    };
    Ok(Some(OrderBy { desc }))
}

/// Parses `filter`; empty means none.
pub fn parse_filter(raw: &str) -> Result<Option<DeviceFilter>, ApiError> {
    if raw.trim().is_empty() {
        return Ok(None);
    }
    if raw.len() > MAX_FILTER_LEN {
        return Err(bad(
            "filter",
            format!("is longer than {MAX_FILTER_LEN} characters; narrow it down"),
        ));
    }
    let tokens = lex(raw)?;
    let mut p = Parser {
        tokens,
        pos: 0,
        depth: 0,
    };
    let f = p.or_expr()?;
    match p.peek() {
        None => Ok(Some(f)),
        Some(t) => Err(bad(
            "filter",
            format!(
                "unexpected {} after a complete expression; join conditions with and / or",
                t.describe()
            ),
        )),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Word(String),
    Text(String),
    Open,
    Close,
    Comma,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Word(w) => crate::json::quote(w),
            Tok::Text(t) => format!("text '{t}'"),
            Tok::Open => "'('".into(),
            Tok::Close => "')'".into(),
            Tok::Comma => "','".into(),
        }
    }
}

fn lex(raw: &str) -> Result<Vec<Tok>, ApiError> {
    let mut out = Vec::new();
    let mut chars = raw.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '(' => out.push(Tok::Open),
            ')' => out.push(Tok::Close),
            ',' => out.push(Tok::Comma),
            '\'' => {
                let mut text = String::new();
                loop {
                    match chars.next() {
                        None => {
                            return Err(bad(
                                "filter",
                                format!("the text starting at character {at} has no closing quote (write a quote inside text as '')"),
                            ))
                        }
                        Some((_, '\'')) => {
                            if chars.peek().map(|(_, c)| *c) == Some('\'') {
                                chars.next();
                                text.push('\'');
                            } else {
                                break;
                            }
                        }
                        Some((_, c)) => text.push(c),
                    }
                }
                out.push(Tok::Text(text));
            }
            c if c.is_ascii_alphanumeric() || c == '_' || c == '$' || c == '.' => {
                let mut word = String::from(c);
                while let Some((_, c)) = chars.peek().copied() {
                    if c.is_ascii_alphanumeric() || c == '_' || c == '$' || c == '.' {
                        word.push(c);
                        chars.next();
                    } else {
                        break;
                    }
                }
                out.push(Tok::Word(word));
            }
            '"' => {
                return Err(bad(
                    "filter",
                    "text is written in single quotes, e.g. displayName eq 'thermostat1'",
                ))
            }
            other => {
                return Err(bad(
                    "filter",
                    format!(
                        "unexpected character {} at {at}; {FIELDS_HELP}",
                        crate::json::quote(&other.to_string())
                    ),
                ))
            }
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Tok>,
    pos: usize,
    depth: usize,
}

enum Literal {
    Text(String),
    Bool(bool),
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn keyword(&mut self, k: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Word(w)) if w == k) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, want: Tok, what: &str) -> Result<(), ApiError> {
        match self.next() {
            Some(t) if t == want => Ok(()),
            Some(t) => Err(bad(
                "filter",
                format!("expected {what}, got {}", t.describe()),
            )),
            None => Err(bad("filter", format!("ends where {what} was expected"))),
        }
    }

    fn or_expr(&mut self) -> Result<DeviceFilter, ApiError> {
        let mut left = self.and_expr()?;
        while self.keyword("or") {
            let right = self.and_expr()?;
            left = DeviceFilter::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and_expr(&mut self) -> Result<DeviceFilter, ApiError> {
        let mut left = self.primary()?;
        while self.keyword("and") {
            let right = self.primary()?;
            left = DeviceFilter::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn primary(&mut self) -> Result<DeviceFilter, ApiError> {
        match self.next() {
            None => Err(bad(
                "filter",
                format!("ends where a condition was expected; {FIELDS_HELP}"),
            )),
            Some(Tok::Open) => {
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return Err(bad(
                        "filter",
                        format!("nests parentheses deeper than {MAX_DEPTH}"),
                    ));
                }
                let inner = self.or_expr()?;
                self.expect(Tok::Close, "')'")?;
                self.depth -= 1;
                Ok(inner)
            }
            Some(Tok::Word(w)) if matches!(self.peek(), Some(Tok::Open)) => self.function(&w),
            Some(Tok::Word(w)) => {
                let field = field(&w)?;
                let op = match self.next() {
                    Some(Tok::Word(o)) => op(&o)?,
                    Some(t) => {
                        return Err(bad(
                            "filter",
                            format!(
                                "expected an operator (eq, ne, lt, le, gt, ge) after {w}, got {}",
                                t.describe()
                            ),
                        ))
                    }
                    None => {
                        return Err(bad(
                            "filter",
                            format!("ends after {w}; compare it, e.g. {w} eq ..."),
                        ))
                    }
                };
                let value = self.literal()?;
                compare(&w, field, op, value)
            }
            Some(t) => Err(bad(
                "filter",
                format!("expected a condition, got {}; {FIELDS_HELP}", t.describe()),
            )),
        }
    }

    fn function(&mut self, name: &str) -> Result<DeviceFilter, ApiError> {
        if name != "contains" {
            return Err(bad(
                "filter",
                format!(
                    "IoT Central's device list supports one function, contains(displayName, 'text'); got {}",
                    crate::json::quote(name)
                ),
            ));
        }
        self.expect(Tok::Open, "'('")?;
        let f = match self.next() {
            Some(Tok::Word(w)) => match field(&w)? {
                Field::Str(f) => f,
                Field::Bool(_) => {
                    return Err(bad(
                        "filter",
                        format!("contains needs a text field (id, displayName, template), got {w}"),
                    ))
                }
            },
            _ => {
                return Err(bad(
                    "filter",
                    "contains takes a field and a text, e.g. contains(displayName, 'thermostat')",
                ))
            }
        };
        self.expect(Tok::Comma, "',' in contains(field, 'text')")?;
        let needle = match self.next() {
            Some(Tok::Text(t)) => t,
            _ => return Err(bad(
                "filter",
                "contains takes a text in single quotes, e.g. contains(displayName, 'thermostat')",
            )),
        };
        self.expect(Tok::Close, "')' closing contains")?;
        Ok(DeviceFilter::Contains(StrFieldContains {
            field: f,
            needle,
        }))
    }

    fn literal(&mut self) -> Result<Literal, ApiError> {
        match self.next() {
            Some(Tok::Text(t)) => Ok(Literal::Text(t)),
            Some(Tok::Word(w)) if w == "true" => Ok(Literal::Bool(true)),
            Some(Tok::Word(w)) if w == "false" => Ok(Literal::Bool(false)),
            Some(t) => Err(bad(
                "filter",
                format!(
                    "expected a value ('text', true or false), got {}",
                    t.describe()
                ),
            )),
            None => Err(bad("filter", "ends where a value was expected")),
        }
    }
}

fn field(name: &str) -> Result<Field, ApiError> {
    let f =
        match name.to_ascii_lowercase().as_str() {
            "id" => Field::Str(StrField::Id),
            "displayname" => Field::Str(StrField::DisplayName),
            "template" => Field::Str(StrField::Template),
            "enabled" => Field::Bool(BoolField::Enabled),
            "provisioned" => Field::Bool(BoolField::Provisioned),
            "simulated" => Field::Bool(BoolField::Simulated),
            "scopes" => return Err(bad(
                "filter",
                "muster cannot evaluate scopes: it has no organizations; leave the condition out",
            )),
            "not" => return Err(bad(
                "filter",
                "not is not one of IoT Central's filter operators; use ne, e.g. enabled ne true",
            )),
            _ => {
                return Err(bad(
                    "filter",
                    format!(
                        "muster cannot evaluate {}: {FIELDS_HELP}",
                        crate::json::quote(name)
                    ),
                ))
            }
        };
    Ok(f)
}

fn op(word: &str) -> Result<Op, ApiError> {
    Ok(match word {
        "eq" => Op::Eq,
        "ne" => Op::Ne,
        "lt" => Op::Lt,
        "le" => Op::Le,
        "gt" => Op::Gt,
        "ge" => Op::Ge,
        other => {
            return Err(bad(
                "filter",
                format!(
                    "muster cannot evaluate the operator {}: use eq, ne, lt, le, gt or ge",
                    crate::json::quote(other)
                ),
            ))
        }
    })
}

fn compare(name: &str, field: Field, op: Op, value: Literal) -> Result<DeviceFilter, ApiError> {
    match (field, value) {
        (Field::Str(field), Literal::Text(value)) => {
            Ok(DeviceFilter::StrCmp(StrFieldCmp { field, op, value }))
        }
        (Field::Bool(field), Literal::Bool(value)) => match op {
            Op::Eq | Op::Ne => Ok(DeviceFilter::BoolCmp(BoolFieldCmp {
                field,
                equal: op == Op::Eq,
                value,
            })),
            _ => Err(bad(
                "filter",
                format!("{name} is true or false: compare it with eq or ne"),
            )),
        },
        (Field::Str(_), Literal::Bool(_)) => Err(bad(
            "filter",
            format!("{name} is text: compare it with a value in single quotes"),
        )),
        (Field::Bool(_), Literal::Text(_)) => Err(bad(
            "filter",
            format!("{name} is true or false: compare it with true or false, without quotes"),
        )),
    }
}

/// Decodes the `%XX` escapes of [`crate::central::percent_encode`]; `None` for anything else.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev<'a>(id: &'a str, name: &'a str) -> DeviceFields<'a> {
        DeviceFields {
            id,
            display_name: name,
            template: Some("dtmi:contoso:Thermostat;1"),
            enabled: true,
            provisioned: false,
            simulated: false,
        }
    }

    fn keeps(filter: &str, d: &DeviceFields<'_>) -> bool {
        parse_filter(filter).unwrap().unwrap().keeps(d)
    }

    fn refused(filter: &str) -> String {
        let e = parse_filter(filter).unwrap_err();
        assert_eq!(e.status, 400, "{filter}");
        e.message
    }

    #[test]
    fn the_references_examples_parse_and_select() {
        let d = dev("device1", "thermostat1");
        assert!(keeps("contains(displayName, 'thermostat')", &d));
        assert!(!keeps("contains(displayName, 'Thermostat')", &d));
        assert!(keeps("id eq 'device1' and enabled eq true", &d));
        assert!(keeps("id eq 'device1' or simulated eq false", &d));
        assert!(!keeps("Enabled ne true", &d));
        assert!(keeps("id le '26whl7mure6'", &dev("26whl7mure6", "x")));
        assert!(!keeps("id lt '26whl7mure6'", &dev("26whl7mure6", "x")));
        assert!(keeps("id ge '26whl7mure6'", &dev("26whl7mure6", "x")));
        assert!(keeps("id gt '26whl7mure6'", &dev("z", "x")));
        assert!(keeps("template eq 'dtmi:contoso:Thermostat;1'", &d));
        assert!(keeps("provisioned eq false and simulated eq false", &d));
    }

    #[test]
    fn and_binds_tighter_than_or_and_parentheses_group() {
        let d = dev("a", "n");
        // false and false or true  == (false and false) or true
        assert!(keeps("id eq 'x' and id eq 'y' or id eq 'a'", &d));
        assert!(!keeps("id eq 'x' and (id eq 'y' or id eq 'a')", &d));
        assert!(keeps("((id eq 'a'))", &d));
    }

    #[test]
    fn quotes_inside_text_are_doubled() {
        assert!(keeps("displayName eq 'O''Brien'", &dev("a", "O'Brien")));
        assert!(keeps("contains(displayName, '''')", &dev("a", "O'Brien")));
    }

    #[test]
    fn a_device_without_template_equals_no_text() {
        let mut d = dev("a", "n");
        d.template = None;
        assert!(!keeps("template eq ''", &d));
        assert!(keeps("template ne 'x'", &d));
        assert!(!keeps("template lt 'zzz'", &d));
        assert!(!keeps("contains(template, '')", &d));
    }

    #[test]
    fn empty_means_no_filter() {
        assert_eq!(parse_filter("").unwrap(), None);
        assert_eq!(parse_filter("   ").unwrap(), None);
        assert_eq!(parse_orderby("").unwrap(), None);
    }

    #[test]
    fn bad_filters_are_refused_naming_what_is_wrong() {
        assert!(refused("scopes eq 'redmond'").contains("scopes"));
        assert!(refused("color eq 'red'").contains("color"));
        assert!(refused("startswith(displayName, 'a')").contains("startswith"));
        assert!(refused("enabled lt true").contains("eq or ne"));
        assert!(refused("enabled eq 'true'").contains("without quotes"));
        assert!(refused("id eq true").contains("single quotes"));
        assert!(refused("id like 'a'").contains("like"));
        assert!(refused("id eq \"a\"").contains("single quotes"));
        assert!(refused("id eq 'a").contains("closing quote"));
        assert!(refused("id eq 'a' id eq 'b'").contains("and / or"));
        assert!(refused("id eq").contains("value"));
        assert!(refused("id").contains("ends after"));
        assert!(refused("(id eq 'a'").contains("')'"));
        assert!(refused("not enabled eq true").contains("ne"));
        assert!(refused("contains(enabled, 'a')").contains("text field"));
        assert!(refused("contains(displayName, a)").contains("single quotes"));
        assert!(refused("id eq 'a' and").contains("condition"));
        assert!(refused("id eq 'a' & id eq 'b'").contains("character \"&\""));
        assert!(refused(&"(".repeat(100)).contains("deeper"));
        assert!(refused(&"a".repeat(5000)).contains("longer"));
        for m in [refused("id eq true"), refused("color eq 'x'")] {
            assert!(m.starts_with("filter: "), "{m}");
        }
    }

    #[test]
    fn orderby_takes_display_name_and_a_direction() {
        assert_eq!(
            parse_orderby("displayName").unwrap(),
            Some(OrderBy { desc: false })
        );
        assert_eq!(
            parse_orderby("displayName asc").unwrap(),
            Some(OrderBy { desc: false })
        );
        assert_eq!(
            parse_orderby("displayName desc").unwrap(),
            Some(OrderBy { desc: true })
        );
        for bad in ["id", "displayName down", "displayName desc id", "enabled"] {
            let e = parse_orderby(bad).unwrap_err();
            assert!(e.message.starts_with("orderby: "), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn percent_decoding_inverts_encoding_and_refuses_junk() {
        let s = "Thermo stat/ü'%";
        assert_eq!(
            percent_decode(&crate::central::percent_encode(s)).as_deref(),
            Some(s)
        );
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%FF"), None);
    }

    #[test]
    fn no_input_panics() {
        for s in [
            "'",
            "''",
            "(",
            ")",
            ",",
            "contains",
            "contains(",
            "contains(id",
            "contains(id,",
            "contains(id,'a'",
            "id eq 'a' or",
            "ü",
            "id eq 'ü'",
            "$filter",
            "a.b eq 'c'",
        ] {
            let _ = parse_filter(s);
            let _ = parse_orderby(s);
        }
    }
}
