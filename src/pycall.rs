//! Calling Python functions from the hot path without building an argument
//! tuple per call.
//!
//! The abi3 build cannot use `PyObject_Vectorcall` through pyo3 before Python
//! 3.12, yet CPython exports it (3.9+ where it is a real function). It is
//! looked up once at run time; when absent, calls go through pyo3 (a tuple
//! per call), so the wheel still runs on every CPython >= 3.9.

use std::ffi::c_void;
use std::sync::OnceLock;

use pyo3::ffi;
use pyo3::prelude::*;

type Vectorcall = unsafe extern "C" fn(
    *mut ffi::PyObject,
    *const *mut ffi::PyObject,
    usize,
    *mut ffi::PyObject,
) -> *mut ffi::PyObject;

/// Bit set in the argument count: the callee may use `args[-1]` as scratch.
const ARGUMENTS_OFFSET: usize = 1 << (usize::BITS - 1);

fn vectorcall() -> Option<Vectorcall> {
    static FUNCTION: OnceLock<Option<Vectorcall>> = OnceLock::new();
    *FUNCTION.get_or_init(|| {
        // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only looks
        // the symbol up; a non-null result is CPython's PyObject_Vectorcall,
        // whose signature is the one above (part of the stable ABI since 3.12
        // and unchanged since 3.9).
        let symbol: *mut c_void =
            unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"PyObject_Vectorcall".as_ptr()) };
        if symbol.is_null() {
            None
        } else {
            Some(unsafe { std::mem::transmute::<*mut c_void, Vectorcall>(symbol) })
        }
    })
}

fn call<'py>(
    function: &Bound<'py, PyAny>,
    args: &[&Bound<'py, PyAny>],
) -> Option<PyResult<Bound<'py, PyAny>>> {
    const MAX_ARGS: usize = 3;
    if args.len() > MAX_ARGS {
        return None;
    }
    let vectorcall = vectorcall()?;
    let py = function.py();
    // One scratch slot before the arguments, as ARGUMENTS_OFFSET allows.
    let mut slots = [std::ptr::null_mut(); MAX_ARGS + 1];
    for (slot, arg) in slots[1..].iter_mut().zip(args) {
        *slot = arg.as_ptr();
    }
    // SAFETY: the GIL is held (we have `py`), every pointer in `slots[1..=n]`
    // is a live object borrowed for the duration of the call, and the result
    // is a new reference or null with an exception set.
    let result = unsafe {
        vectorcall(
            function.as_ptr(),
            slots.as_ptr().add(1),
            args.len() | ARGUMENTS_OFFSET,
            std::ptr::null_mut(),
        )
    };
    Some(if result.is_null() {
        Err(PyErr::fetch(py))
    } else {
        // SAFETY: a non-null result of a call is a new (owned) reference.
        Ok(unsafe { Bound::from_owned_ptr(py, result) })
    })
}

/// `function(arg)`.
pub fn call1<'py>(
    function: &Bound<'py, PyAny>,
    arg: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    call(function, &[arg]).unwrap_or_else(|| function.call1((arg,)))
}

/// `function(first, second)`.
pub fn call2<'py>(
    function: &Bound<'py, PyAny>,
    first: &Bound<'py, PyAny>,
    second: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    call(function, &[first, second]).unwrap_or_else(|| function.call1((first, second)))
}

/// `function(first, second, third)`.
pub fn call3<'py>(
    function: &Bound<'py, PyAny>,
    first: &Bound<'py, PyAny>,
    second: &Bound<'py, PyAny>,
    third: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    call(function, &[first, second, third])
        .unwrap_or_else(|| function.call1((first, second, third)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_with_one_two_and_three_arguments() {
        Python::initialize();
        Python::attach(|py| {
            let builtins = py.import("builtins").unwrap();
            let abs = builtins.getattr("abs").unwrap();
            let value = (-3i64).into_pyobject(py).unwrap().into_any();
            assert_eq!(call1(&abs, &value).unwrap().extract::<i64>().unwrap(), 3);
            let pow = builtins.getattr("pow").unwrap();
            let two = 2i64.into_pyobject(py).unwrap().into_any();
            let ten = 10i64.into_pyobject(py).unwrap().into_any();
            assert_eq!(
                call2(&pow, &two, &ten).unwrap().extract::<i64>().unwrap(),
                1024
            );
            let three = 3i64.into_pyobject(py).unwrap().into_any();
            assert_eq!(
                call3(&pow, &two, &ten, &three)
                    .unwrap()
                    .extract::<i64>()
                    .unwrap(),
                1
            );
            let err = call1(&abs, &py.None().into_bound(py)).unwrap_err();
            assert!(err.is_instance_of::<pyo3::exceptions::PyTypeError>(py));
        });
    }
}
