/* ctl/_fast.h: what the parts of ctl._fast share (ctl/_fast_bencode.c has the overview). */
#ifndef RTPAI_CTL_FAST_H
#define RTPAI_CTL_FAST_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* ctl.bencode.BencodeError and collections.abc.Mapping once bind() has been called; ValueError
 * and NULL (no Mapping but dict) until then (_fast_bencode.c). */
extern PyObject *BencodeError;
extern PyObject *MappingABC;

/* The bounds of ctl/bencode.py (MAX_BENCODE_DEPTH, _MAX_INTEGER_DIGITS), exported as MAX_DEPTH
 * and MAX_DIGITS: tests/test_fast_bencode.py holds them to the Python's. */
#define BENCODE_MAX_DEPTH 32
#define BENCODE_MAX_DIGITS 19

/* _fast_bdecode.c */
PyObject *bdecode(PyObject *module, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames);

/* _fast_bencode.c */
PyObject *bencode(PyObject *module, PyObject *value);

#endif
