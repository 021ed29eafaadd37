//! Python values in, Python values out: keys and values as bytes (`str`
//! accepted as UTF-8), full prefixes, contexts, JSON documents as `dict`s,
//! and reads as the `chorus._types` classes both handles return.

use chorus_core::FullPrefix;
use chorus_core::object::{Content, Context, Value, context_from_string, context_to_string};
use chorus_store::{Item, Read};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyList, PyMemoryView, PyString, PyTuple,
};

use crate::errors::{invalid, name_error};

/// Deepest JSON nesting accepted from (or given to) Python.
const MAX_DEPTH: usize = 64;

/// The bytes of a key or value argument: `bytes`, `bytearray`,
/// `memoryview`, or `str` (as UTF-8); anything else is `InvalidInput` naming `what`.
pub(crate) fn bytes_arg(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<u8>> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(b.as_bytes().to_vec());
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(utf8(s, what)?.as_bytes().to_vec());
    }
    if let Ok(b) = obj.cast::<PyByteArray>() {
        return Ok(b.to_vec());
    }
    if obj.cast::<PyMemoryView>().is_ok() {
        // The limited API has no buffer access before 3.11: copy through
        // `tobytes()`, which also flattens a non-contiguous view.
        let copied = obj.call_method0("tobytes")?;
        if let Ok(b) = copied.cast::<PyBytes>() {
            return Ok(b.as_bytes().to_vec());
        }
    }
    Err(invalid(format!(
        "the {what} must be bytes, bytearray, memoryview or str, not {}",
        type_name(obj)
    )))
}

/// The UTF-8 text of a `str`; one holding a lone surrogate (which UTF-8
/// cannot encode) is `InvalidInput` naming `what`, not a `UnicodeEncodeError`.
fn utf8<'a>(s: &'a Bound<'_, PyString>, what: &str) -> PyResult<std::borrow::Cow<'a, str>> {
    s.to_cow().map_err(|e| {
        invalid(format!(
            "the {what} is a str that UTF-8 cannot encode ({e}): pass bytes, or text without lone surrogates"
        ))
    })
}

/// A `str` argument, or `InvalidInput` naming `what`.
pub(crate) fn str_arg(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<String> {
    match obj.cast::<PyString>() {
        Ok(s) => Ok(utf8(s, what)?.into_owned()),
        Err(_) => Err(invalid(format!(
            "the {what} must be a str, not {}",
            type_name(obj)
        ))),
    }
}

/// The name of an object's type, for messages.
pub(crate) fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "an unknown type".into())
}

/// A full prefix argument (`"prefix/subprefix"`).
pub(crate) fn full_prefix(obj: &Bound<'_, PyAny>) -> PyResult<FullPrefix> {
    let text = str_arg(obj, "full prefix")?;
    FullPrefix::parse(&text).map_err(name_error)
}

/// `chorus._chorus.split_full_prefix(text)`: `(prefix, subprefix)` of a
/// full prefix, checked by the engine's rules (the remote client checks
/// names with this, so both handles refuse the same names alike).
#[pyfunction]
pub(crate) fn split_full_prefix(obj: &Bound<'_, PyAny>) -> PyResult<(String, String)> {
    let fp = full_prefix(obj)?;
    Ok((fp.prefix().to_string(), fp.subprefix().to_string()))
}

/// `chorus._chorus.check_names(prefix, subprefix)`: `InvalidInput` when
/// either part breaks the engine's rules for names.
#[pyfunction]
pub(crate) fn check_names(prefix: &str, subprefix: &str) -> PyResult<()> {
    FullPrefix::new(prefix, subprefix)
        .map(|_| ())
        .map_err(name_error)
}

/// A context argument (the opaque string a read returned).
pub(crate) fn context_arg(text: Option<&str>) -> PyResult<Option<Context>> {
    text.map(|t| {
        context_from_string(t).map_err(|e| {
            invalid(format!(
                "the context {t:?} is not one a read returned ({e}): pass the `context` of a read, or none"
            ))
        })
    })
    .transpose()
}

/// A class of `chorus._types`, imported once.
fn types_class<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    let module = MODULE.get_or_try_init(py, || py.import("chorus._types").map(Bound::unbind))?;
    module.bind(py).getattr(name)
}

/// A `chorus.Sibling`.
fn sibling<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    let value = match &v.content {
        Content::Tombstone => py.None().into_bound(py),
        _ => match v.bytes() {
            Some(b) => PyBytes::new(py, b).into_any(),
            None => py.None().into_bound(py),
        },
    };
    types_class(py, "Sibling")?.call1((value, v.timestamp.ms(), v.node.to_string()))
}

/// A `chorus.Read` of `read` (an absent key: no siblings, the empty context).
pub(crate) fn read_py<'py>(py: Python<'py>, read: Option<&Read>) -> PyResult<Bound<'py, PyAny>> {
    let class = types_class(py, "Read")?;
    match read {
        None => {
            let empty = context_to_string(&chorus_core::object::Object::empty_context());
            class.call1((PyList::empty(py), empty, true))
        }
        Some(r) => {
            let siblings = r
                .values
                .iter()
                .map(|v| sibling(py, v))
                .collect::<PyResult<Vec<_>>>()?;
            class.call1((
                PyList::new(py, siblings)?,
                context_to_string(&r.context),
                r.tombstone,
            ))
        }
    }
}

/// A `chorus.Item`.
pub(crate) fn item_py<'py>(py: Python<'py>, item: &Item) -> PyResult<Bound<'py, PyAny>> {
    let read = read_py(py, Some(&item.read))?;
    types_class(py, "Item")?.call1((
        item.full_prefix.to_string(),
        PyBytes::new(py, &item.key),
        read,
    ))
}

/// A `chorus.Change` or `chorus.Gap` (see `chorus._types`).
pub(crate) fn types<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    types_class(py, name)
}

/// The live values of a read, in order.
pub(crate) fn live_values(values: &[Value]) -> Vec<Vec<u8>> {
    values
        .iter()
        .filter_map(|v| v.bytes().map(<[u8]>::to_vec))
        .collect()
}

/// A JSON value as a Python object (`dict`, `list`, `str`, `int`,
/// `float`, `bool`, `None`).
pub(crate) fn json_to_py<'py>(
    py: Python<'py>,
    v: &serde_json::Value,
) -> PyResult<Bound<'py, PyAny>> {
    use serde_json::Value as J;
    Ok(match v {
        J::Null => py.None().into_bound(py),
        J::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        J::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into_pyobject(py)?.into_any()
            } else if let Some(u) = n.as_u64() {
                u.into_pyobject(py)?.into_any()
            } else {
                n.as_f64().unwrap_or(f64::NAN).into_pyobject(py)?.into_any()
            }
        }
        J::String(s) => PyString::new(py, s).into_any(),
        J::Array(a) => {
            let items = a
                .iter()
                .map(|x| json_to_py(py, x))
                .collect::<PyResult<Vec<_>>>()?;
            PyList::new(py, items)?.into_any()
        }
        J::Object(o) => {
            let d = PyDict::new(py);
            for (k, x) in o {
                d.set_item(k, json_to_py(py, x)?)?;
            }
            d.into_any()
        }
    })
}

/// A Python object as JSON: `dict` (with `str` keys), `list`, `tuple`,
/// `str`, `int`, finite `float`, `bool`, `None`; anything else (or
/// nesting deeper than 64) is `InvalidInput` naming `what`.
pub(crate) fn py_to_json(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<serde_json::Value> {
    to_json(obj, what, 0)
}

fn to_json(obj: &Bound<'_, PyAny>, what: &str, depth: usize) -> PyResult<serde_json::Value> {
    use serde_json::Value as J;
    if depth > MAX_DEPTH {
        return Err(invalid(format!(
            "the {what} nests deeper than {MAX_DEPTH} levels"
        )));
    }
    if obj.is_none() {
        return Ok(J::Null);
    }
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(J::Bool(b.is_true()));
    }
    if obj.cast::<PyInt>().is_ok() {
        if let Ok(i) = obj.extract::<i64>() {
            return Ok(J::from(i));
        }
        if let Ok(u) = obj.extract::<u64>() {
            return Ok(J::from(u));
        }
        return Err(invalid(format!(
            "the {what} holds an integer outside the 64-bit range"
        )));
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        let x = f.value();
        return serde_json::Number::from_f64(x)
            .map(J::Number)
            .ok_or_else(|| invalid(format!("the {what} holds {x}, which JSON cannot represent")));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(J::String(utf8(s, what)?.into_owned()));
    }
    if let Ok(d) = obj.cast::<PyDict>() {
        let mut out = serde_json::Map::new();
        for (k, v) in d.iter() {
            let Ok(key) = k.cast::<PyString>() else {
                return Err(invalid(format!(
                    "the {what} has a key of type {}: JSON object keys are str",
                    type_name(&k)
                )));
            };
            out.insert(utf8(key, what)?.into_owned(), to_json(&v, what, depth + 1)?);
        }
        return Ok(J::Object(out));
    }
    if let Ok(l) = obj.cast::<PyList>() {
        return l.iter().map(|x| to_json(&x, what, depth + 1)).collect();
    }
    if let Ok(t) = obj.cast::<PyTuple>() {
        return t.iter().map(|x| to_json(&x, what, depth + 1)).collect();
    }
    Err(invalid(format!(
        "the {what} holds a {}, which is not JSON (dict, list, str, int, float, bool, None)",
        type_name(obj)
    )))
}

/// Keyword options as types whose extraction raises `InvalidInput` naming
/// the option (PyO3's own conversions raise a bare `TypeError`).
macro_rules! option_types {
    ($(flag $flag:ident = $fname:literal;)* $(text $text:ident = $tname:literal;)* $(seconds $secs:ident = $sname:literal;)*) => {
        $(
            #[doc = concat!("The `", $fname, "` option: True or False.")]
            pub(crate) struct $flag(pub(crate) bool);
            impl<'a, 'py> FromPyObject<'a, 'py> for $flag {
                type Error = PyErr;
                fn extract(obj: pyo3::Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
                    let obj = obj.to_owned();
                    match obj.cast::<PyBool>() {
                        Ok(b) => Ok($flag(b.is_true())),
                        Err(_) => Err(invalid(format!(
                            "{}= must be True or False, not {}",
                            $fname,
                            type_name(&obj)
                        ))),
                    }
                }
            }
        )*
        $(
            #[doc = concat!("The `", $tname, "` option: a str.")]
            pub(crate) struct $text(pub(crate) String);
            impl<'a, 'py> FromPyObject<'a, 'py> for $text {
                type Error = PyErr;
                fn extract(obj: pyo3::Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
                    let obj = obj.to_owned();
                    match obj.cast::<PyString>() {
                        Ok(s) => s
                            .to_cow()
                            .map(|c| $text(c.into_owned()))
                            .map_err(|_| invalid(format!("{}= is not valid Unicode text", $tname))),
                        Err(_) => Err(invalid(format!(
                            "{}= must be a str, not {}",
                            $tname,
                            type_name(&obj)
                        ))),
                    }
                }
            }
        )*
        $(
            #[doc = concat!("The `", $sname, "` option: a number of seconds.")]
            pub(crate) struct $secs(pub(crate) f64);
            impl<'a, 'py> FromPyObject<'a, 'py> for $secs {
                type Error = PyErr;
                fn extract(obj: pyo3::Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
                    let obj = obj.to_owned();
                    let number = obj.cast::<PyBool>().is_err()
                        && (obj.cast::<PyInt>().is_ok() || obj.cast::<PyFloat>().is_ok());
                    match obj.extract::<f64>() {
                        Ok(x) if number => Ok($secs(x)),
                        _ => Err(invalid(format!(
                            "{}= must be a number of seconds, not {}",
                            $sname,
                            type_name(&obj)
                        ))),
                    }
                }
            }
        )*
    };
}

option_types! {
    flag AllowPut = "allow_put";
    flag IfAbsent = "if_absent";
    flag Tombstones = "tombstones";
    flag Create = "create";
    flag Conflicts = "conflicts";
    flag KeepBoth = "keep_both";
    text ContextText = "context";
    text Pattern = "match";
    text FromId = "from_";
    text RevText = "rev";
    text SyncText = "sync";
    seconds LockTimeoutSecs = "lock_timeout";
    seconds TimeoutSecs = "timeout";
}
