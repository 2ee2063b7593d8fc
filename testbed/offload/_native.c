/* The offload engine's native fast path: the SAN frame decoder and the shm ring copies.
 *
 * Plain CPython C API (no dependency beyond a C compiler and Python's headers). Every
 * function here has a pure-Python twin that stays the reference (protocol.FrameDecoder,
 * shmring.ShmTransport); tests/test_native.py checks that both give the same frames and
 * the same ring bytes. testbed/offload/native.py picks this module when it was built and
 * TCPS_NATIVE is not 0. Why these and nothing else: docs/performance.md, "Native path".
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define HDR_SIZE 16

static inline uint32_t rd32(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* decode(data, version, max_type, max_payload) -> (frames, offset, bad)
 *
 * Frames are (type, conn, arg, payload bytes) tuples, as FrameDecoder builds them, for
 * every complete frame from the start of ``data``; ``offset`` is where the first
 * incomplete (or bad) frame starts; ``bad`` is 1 when the header at ``offset`` breaks a
 * rule (the caller raises the same ProtocolError the Python decoder does). */
static PyObject *decode(PyObject *self, PyObject *args) {
    Py_buffer buf;
    unsigned int version, max_type;
    Py_ssize_t max_payload;
    if (!PyArg_ParseTuple(args, "y*IIn", &buf, &version, &max_type, &max_payload))
        return NULL;
    const unsigned char *d = buf.buf;
    Py_ssize_t end = buf.len, off = 0;
    int bad = 0;
    PyObject *out = PyList_New(0);
    if (out == NULL)
        goto fail;
    while (end - off >= HDR_SIZE) {
        const unsigned char *h = d + off;
        uint32_t length = rd32(h);
        unsigned int ftype = h[5];
        if (h[4] != version || ftype < 1 || ftype > max_type || h[6] || h[7] ||
            (Py_ssize_t)length > max_payload) {
            bad = 1;
            break;
        }
        Py_ssize_t stop = off + HDR_SIZE + (Py_ssize_t)length;
        if (stop > end)
            break;
        PyObject *t = PyTuple_New(4);
        if (t == NULL)
            goto fail;
        PyObject *f0 = PyLong_FromUnsignedLong(ftype);
        PyObject *f1 = PyLong_FromUnsignedLong(rd32(h + 8));
        PyObject *f2 = PyLong_FromUnsignedLong(rd32(h + 12));
        PyObject *f3 = PyBytes_FromStringAndSize((const char *)h + HDR_SIZE, (Py_ssize_t)length);
        if (!f0 || !f1 || !f2 || !f3) {
            Py_XDECREF(f0); Py_XDECREF(f1); Py_XDECREF(f2); Py_XDECREF(f3);
            Py_DECREF(t);
            goto fail;
        }
        PyTuple_SET_ITEM(t, 0, f0);
        PyTuple_SET_ITEM(t, 1, f1);
        PyTuple_SET_ITEM(t, 2, f2);
        PyTuple_SET_ITEM(t, 3, f3);
        if (PyList_Append(out, t) < 0) {
            Py_DECREF(t);
            goto fail;
        }
        Py_DECREF(t);
        off = stop;
    }
    PyBuffer_Release(&buf);
    return Py_BuildValue("(Nni)", out, off, bad);
fail:
    Py_XDECREF(out);
    PyBuffer_Release(&buf);
    return NULL;
}

/* The ring: ``mem`` is the whole mapping; counters are 8-byte words at byte offsets;
 * ``base`` and ``cap`` locate one direction's data. x86-64 only (shmring refuses others):
 * acquire/release loads and stores, and a full fence where shmring needs Dekker's order. */

static int get_ring(PyObject *mem, Py_buffer *view, int writable) {
    return PyObject_GetBuffer(mem, view, writable ? PyBUF_WRITABLE : PyBUF_SIMPLE);
}

static inline uint64_t *word(Py_buffer *v, Py_ssize_t at) {
    return (uint64_t *)((char *)v->buf + at);
}

/* put(mem, head_at, tail_at, base, cap, head, data) -> bytes copied, -1 if corrupt */
static PyObject *put(PyObject *self, PyObject *args) {
    PyObject *mem;
    Py_ssize_t head_at, tail_at, base, cap;
    unsigned long long head;
    Py_buffer data, v;
    if (!PyArg_ParseTuple(args, "OnnnnKy*", &mem, &head_at, &tail_at, &base, &cap, &head, &data))
        return NULL;
    if (get_ring(mem, &v, 1) < 0) {
        PyBuffer_Release(&data);
        return NULL;
    }
    if (head_at < 0 || tail_at < 0 || head_at + 8 > v.len || tail_at + 8 > v.len || cap <= 0 ||
        (cap & (cap - 1)) || base < 0 || base + cap > v.len) {
        PyBuffer_Release(&data);
        PyBuffer_Release(&v);
        PyErr_SetString(PyExc_ValueError, "ring layout outside the mapping");
        return NULL;
    }
    uint64_t tail = __atomic_load_n(word(&v, tail_at), __ATOMIC_ACQUIRE);
    uint64_t used = (uint64_t)head - tail;
    Py_ssize_t n;
    if (used > (uint64_t)cap) {
        n = -1;  /* the peer wrote a tail we never reached */
    } else {
        n = cap - (Py_ssize_t)used;
        if (n > data.len)
            n = data.len;
        if (n > 0) {
            Py_ssize_t pos = (Py_ssize_t)(head & (uint64_t)(cap - 1));
            Py_ssize_t first = cap - pos < n ? cap - pos : n;
            char *ring = (char *)v.buf + base;
            memcpy(ring + pos, data.buf, first);
            if (n > first)
                memcpy(ring, (char *)data.buf + first, n - first);
            __atomic_store_n(word(&v, head_at), (uint64_t)head + (uint64_t)n, __ATOMIC_RELEASE);
        }
    }
    PyBuffer_Release(&data);
    PyBuffer_Release(&v);
    return PyLong_FromSsize_t(n);
}

/* take(mem, head_at, tail_at, base, cap, tail) -> bytes (b"" when empty), None if corrupt.
 * Publishes the new tail and fences, so that the caller's next load (the peer's
 * space_wanted flag) is ordered after it. */
static PyObject *take(PyObject *self, PyObject *args) {
    PyObject *mem;
    Py_ssize_t head_at, tail_at, base, cap;
    unsigned long long tail;
    Py_buffer v;
    if (!PyArg_ParseTuple(args, "OnnnnK", &mem, &head_at, &tail_at, &base, &cap, &tail))
        return NULL;
    if (get_ring(mem, &v, 1) < 0)
        return NULL;
    if (head_at < 0 || tail_at < 0 || head_at + 8 > v.len || tail_at + 8 > v.len || cap <= 0 ||
        (cap & (cap - 1)) || base < 0 || base + cap > v.len) {
        PyBuffer_Release(&v);
        PyErr_SetString(PyExc_ValueError, "ring layout outside the mapping");
        return NULL;
    }
    uint64_t head = __atomic_load_n(word(&v, head_at), __ATOMIC_ACQUIRE);
    uint64_t n = head - (uint64_t)tail;
    PyObject *res;
    if (n == 0) {
        res = PyBytes_FromStringAndSize(NULL, 0);
    } else if (n > (uint64_t)cap) {  /* a head behind our tail would deliver bytes twice */
        Py_INCREF(Py_None);
        res = Py_None;
    } else {
        Py_ssize_t pos = (Py_ssize_t)(tail & (uint64_t)(cap - 1));
        Py_ssize_t first = cap - pos < (Py_ssize_t)n ? cap - pos : (Py_ssize_t)n;
        res = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n);
        if (res != NULL) {
            char *dst = PyBytes_AS_STRING(res);
            const char *ring = (const char *)v.buf + base;
            memcpy(dst, ring + pos, first);
            if ((Py_ssize_t)n > first)
                memcpy(dst + first, ring, (Py_ssize_t)n - first);
            __atomic_store_n(word(&v, tail_at), head, __ATOMIC_RELEASE);
            __atomic_thread_fence(__ATOMIC_SEQ_CST);
        }
    }
    PyBuffer_Release(&v);
    return res;
}

static PyObject *fence(PyObject *self, PyObject *unused) {
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"decode", decode, METH_VARARGS, "Complete SAN frames from the start of a buffer: (frames, offset, bad)."},
    {"put", put, METH_VARARGS, "Copy into a shm ring and publish the head: bytes copied, -1 if corrupt."},
    {"take", take, METH_VARARGS, "Everything a shm ring holds, tail published and fenced; None if corrupt."},
    {"fence", fence, METH_NOARGS, "A full memory barrier."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native",
                                    "The offload engine's native fast path (see native.py).", -1, methods};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
