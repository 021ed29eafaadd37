//! Just enough DER to read what revocation and renewal need from a
//! certificate: its serial number, validity, subject common names and IP
//! addresses. It reads certificates that the WebPKI verifier has already
//! accepted, or files `chorus cluster cert` wrote; every length is
//! checked all the same, and anything unexpected reads as `None`.

use std::net::IpAddr;

/// What Chorus reads from a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CertInfo {
    /// The serial number's bytes (big-endian, as encoded).
    pub(crate) serial: Vec<u8>,
    /// Unix seconds.
    pub(crate) not_before: i64,
    /// Unix seconds.
    pub(crate) not_after: i64,
    /// Every common name of the subject (one for the certificates Chorus
    /// issues).
    pub(crate) common_names: Vec<String>,
    /// The IP addresses of the subject alternative names.
    pub(crate) ips: Vec<IpAddr>,
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const INTEGER: u8 = 0x02;
const OID: u8 = 0x06;
const OCTET_STRING: u8 = 0x04;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
const UTF8_STRING: u8 = 0x0c;
const PRINTABLE_STRING: u8 = 0x13;
const IA5_STRING: u8 = 0x16;
/// `[0] EXPLICIT Version` of a TBSCertificate.
const VERSION: u8 = 0xa0;
/// `[3] EXPLICIT Extensions` of a TBSCertificate.
const EXTENSIONS: u8 = 0xa3;
/// `iPAddress [7] IMPLICIT OCTET STRING` of a GeneralName.
const GENERAL_NAME_IP: u8 = 0x87;
/// id-at-commonName, 2.5.4.3.
const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
/// id-ce-subjectAltName, 2.5.29.17.
const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

/// Reads DER elements one after the other.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    /// The next element's tag and contents.
    fn next(&mut self) -> Option<(u8, &'a [u8])> {
        let (&tag, rest) = self.rest.split_first()?;
        // High tag numbers appear in no field read here.
        if tag & 0x1f == 0x1f {
            return None;
        }
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |len, b| (len << 8) | usize::from(*b));
            rest = &rest[n..];
            len
        };
        if rest.len() < len {
            return None;
        }
        let (value, after) = rest.split_at(len);
        self.rest = after;
        Some((tag, value))
    }

    /// The next element's contents if it has this tag.
    fn expect(&mut self, tag: u8) -> Option<&'a [u8]> {
        let (t, value) = self.next()?;
        (t == tag).then_some(value)
    }
}

/// Reads a certificate (DER).
pub(crate) fn parse(der: &[u8]) -> Option<CertInfo> {
    let certificate = Reader::new(der).expect(SEQUENCE)?;
    let mut tbs = Reader::new(Reader::new(certificate).expect(SEQUENCE)?);
    let mut field = tbs.next()?;
    if field.0 == VERSION {
        field = tbs.next()?;
    }
    if field.0 != INTEGER {
        return None;
    }
    let serial = field.1.to_vec();
    tbs.expect(SEQUENCE)?; // the signature algorithm
    tbs.expect(SEQUENCE)?; // the issuer
    let mut validity = Reader::new(tbs.expect(SEQUENCE)?);
    let not_before = time(validity.next()?)?;
    let not_after = time(validity.next()?)?;
    let common_names = common_names(tbs.expect(SEQUENCE)?)?;
    tbs.expect(SEQUENCE)?; // the public key
    let mut ips = Vec::new();
    // Then optional unique ids and the extensions.
    while let Some((tag, value)) = tbs.next() {
        if tag == EXTENSIONS {
            ips = san_ips(value)?;
        }
    }
    Some(CertInfo {
        serial,
        not_before,
        not_after,
        common_names,
        ips,
    })
}

/// The common names of a Name (a sequence of sets of type-value pairs).
fn common_names(name: &[u8]) -> Option<Vec<String>> {
    let mut names = Vec::new();
    let mut rdns = Reader::new(name);
    while let Some((tag, set)) = rdns.next() {
        if tag != SET {
            return None;
        }
        let mut pairs = Reader::new(set);
        while let Some(pair) = pairs.next() {
            let (SEQUENCE, pair) = pair else {
                return None;
            };
            let mut pair = Reader::new(pair);
            let oid = pair.expect(OID)?;
            let (tag, value) = pair.next()?;
            if oid == COMMON_NAME {
                match tag {
                    UTF8_STRING | PRINTABLE_STRING | IA5_STRING => {
                        names.push(String::from_utf8(value.to_vec()).ok()?);
                    }
                    // Other string types: a name Chorus never writes, kept
                    // visible (so that it matches no revoked name by
                    // accident of decoding) but not decoded.
                    _ => names.push(format!("(undecoded string type {tag:#04x})")),
                }
            }
        }
    }
    Some(names)
}

/// The IP addresses among the subject alternative names.
fn san_ips(extensions: &[u8]) -> Option<Vec<IpAddr>> {
    let mut ips = Vec::new();
    let mut list = Reader::new(Reader::new(extensions).expect(SEQUENCE)?);
    while let Some((tag, extension)) = list.next() {
        if tag != SEQUENCE {
            return None;
        }
        let mut extension = Reader::new(extension);
        let oid = extension.expect(OID)?;
        if oid != SUBJECT_ALT_NAME {
            continue;
        }
        // An optional `critical` BOOLEAN, then the value.
        let value = loop {
            let (tag, value) = extension.next()?;
            if tag == OCTET_STRING {
                break value;
            }
        };
        let mut names = Reader::new(Reader::new(value).expect(SEQUENCE)?);
        while let Some((tag, name)) = names.next() {
            if tag != GENERAL_NAME_IP {
                continue;
            }
            if let Ok(v4) = <[u8; 4]>::try_from(name) {
                ips.push(IpAddr::from(v4));
            } else if let Ok(v6) = <[u8; 16]>::try_from(name) {
                ips.push(IpAddr::from(v6));
            }
        }
    }
    Some(ips)
}

/// A UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`) as
/// unix seconds.
fn time((tag, value): (u8, &[u8])) -> Option<i64> {
    let text = std::str::from_utf8(value).ok()?;
    let digits = text.strip_suffix('Z')?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (year, rest) = match (tag, digits.len()) {
        (UTC_TIME, 12) => {
            // RFC 5280: 50-99 are 1950-1999, 00-49 are 2000-2049.
            let yy: i64 = digits[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &digits[2..])
        }
        (GENERALIZED_TIME, 14) => (digits[..4].parse().ok()?, &digits[4..]),
        _ => return None,
    };
    let field = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let (month, day) = (field(0)?, field(2)?);
    let (hour, minute, second) = (field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(days * 86_400 + hour * 3600 + minute * 60 + second.min(60))
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub(crate) fn utc(secs: i64) -> String {
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

    fn cert(params: CertificateParams) -> Vec<u8> {
        let key = KeyPair::generate().expect("key");
        params.self_signed(&key).expect("sign").der().to_vec()
    }

    #[test]
    fn reads_what_chorus_writes_in_a_certificate() {
        let mut params = CertificateParams::new(vec!["n1".to_string()]).expect("params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "n1");
        params.distinguished_name = dn;
        params.subject_alt_names.extend([
            SanType::IpAddress("127.0.0.1".parse().expect("ip")),
            SanType::IpAddress("::1".parse().expect("ip")),
        ]);
        params.not_before = rcgen::date_time_ymd(2020, 2, 29);
        params.not_after = rcgen::date_time_ymd(2060, 1, 1);
        params.serial_number = Some(vec![0x01, 0x02, 0x03].into());
        let info = parse(&cert(params)).expect("parses");
        assert_eq!(info.serial, vec![1, 2, 3]);
        assert_eq!(info.not_before, 1_582_934_400); // 2020-02-29T00:00:00Z
        assert_eq!(info.not_after, 2_840_140_800); // 2060-01-01, a GeneralizedTime
        assert_eq!(info.common_names, vec!["n1".to_string()]);
        assert_eq!(
            info.ips,
            vec![
                "127.0.0.1".parse::<IpAddr>().expect("ip"),
                "::1".parse::<IpAddr>().expect("ip")
            ]
        );
    }

    #[test]
    fn reads_the_old_format_valid_from_1975_to_4096() {
        // What `chorus cluster cert` issued before certificates had a
        // lifetime: rcgen's defaults.
        let params = CertificateParams::new(vec!["old".to_string()]).expect("params");
        let info = parse(&cert(params)).expect("parses");
        assert_eq!(utc(info.not_before), "1975-01-01T00:00:00Z");
        assert_eq!(utc(info.not_after), "4096-01-01T00:00:00Z");
    }

    #[test]
    fn anything_truncated_or_garbled_reads_as_none() {
        let der = cert(CertificateParams::new(vec!["n".to_string()]).expect("params"));
        for len in [0, 1, 2, 10, der.len() / 2, der.len() - 1] {
            assert_eq!(parse(&der[..len]), None, "{len} bytes");
        }
        assert_eq!(parse(b"not a certificate at all"), None);
        assert_eq!(parse(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    }

    #[test]
    fn dates_round_trip() {
        for secs in [
            0,
            951_782_400,
            1_700_000_000,
            4_102_444_800,
            253_402_300_799,
        ] {
            let text = utc(secs);
            let digits: String = text.chars().filter(char::is_ascii_digit).collect();
            assert_eq!(
                time((GENERALIZED_TIME, format!("{digits}Z").as_bytes())),
                Some(secs),
                "{text}"
            );
        }
    }
}
