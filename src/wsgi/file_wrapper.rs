//! `wsgi.file_wrapper`: wraps a file-like object so the worker can send it with
//! `sendfile(2)` (zero copies through Python) when it is a real file, and iterate it in
//! `blksize` blocks otherwise, as gunicorn's `FileWrapper` does.

use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// The `wsgi.file_wrapper` type.
#[pyclass(module = "ferrocorn._ferrocorn", name = "FileWrapper")]
#[derive(Debug)]
pub struct FileWrapper {
    /// The wrapped file-like object.
    #[pyo3(get)]
    pub filelike: Py<PyAny>,
    /// Block size for iteration.
    #[pyo3(get)]
    pub blksize: usize,
}

#[pymethods]
impl FileWrapper {
    #[new]
    #[pyo3(signature = (filelike, blksize=8192))]
    fn new(filelike: Py<PyAny>, blksize: usize) -> Self {
        FileWrapper {
            filelike,
            blksize: blksize.max(1),
        }
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let data = self
            .filelike
            .bind(py)
            .call_method1(pyo3::intern!(py, "read"), (self.blksize,))?;
        let empty = match data.cast::<PyBytes>() {
            Ok(b) => b.as_bytes().is_empty(),
            Err(_) => !data.is_truthy()?,
        };
        Ok(if empty { None } else { Some(data) })
    }

    /// Closes the wrapped file if it can be closed.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let f = self.filelike.bind(py);
        if f.hasattr(pyo3::intern!(py, "close"))? {
            f.call_method0(pyo3::intern!(py, "close"))?;
        }
        Ok(())
    }
}
