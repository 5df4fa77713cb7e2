/* media._fast, part 3: the media clock's one-shot timerfd (media/clock.py; see _fast.c).
 * Python 3.11 has no os.timerfd_create.
 */
#include "_fast.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <sys/timerfd.h>
#include <unistd.h>

/* --- the media clock's timer ------------------------------------------------------------ */

static int fd_value(PyObject *arg) {
    long v = PyLong_AsLong(arg);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < 0 || v > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "not a file descriptor");
        return -1;
    }
    return (int)v;
}

PyObject *timer_open(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
    int fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (fd < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return PyLong_FromLong(fd);
}

/* Fire once, `delay` seconds from now: at once (1 ns) if it is not positive, never if it is
 * infinite (disarmed). */
PyObject *timer_arm(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "timer_arm(fd, delay)");
        return NULL;
    }
    int fd = fd_value(args[0]);
    if (fd < 0)
        return NULL;
    double delay = PyFloat_AsDouble(args[1]);
    if (delay == -1.0 && PyErr_Occurred())
        return NULL;
    struct itimerspec spec = {{0, 0}, {0, 0}};
    if (isnan(delay)) {
        PyErr_SetString(PyExc_ValueError, "delay is NaN");
        return NULL;
    }
    if (!isinf(delay)) {
        if (delay > 86400.0)
            delay = 86400.0; /* a day: the clock is re-armed long before */
        if (delay <= 0.0) {
            spec.it_value.tv_nsec = 1; /* zero would disarm it */
        } else {
            spec.it_value.tv_sec = (time_t)delay;
            spec.it_value.tv_nsec = (long)((delay - (double)spec.it_value.tv_sec) * 1e9);
            if (spec.it_value.tv_nsec > 999999999L)
                spec.it_value.tv_nsec = 999999999L; /* rounding: EINVAL otherwise */
            if (spec.it_value.tv_sec == 0 && spec.it_value.tv_nsec == 0)
                spec.it_value.tv_nsec = 1;
        }
    }
    if (timerfd_settime(fd, 0, &spec, NULL) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

/* Take the expiration count, so the descriptor stops being readable: 0 if it had not fired. */
PyObject *timer_clear(PyObject *module, PyObject *arg) {
    (void)module;
    int fd = fd_value(arg);
    if (fd < 0)
        return NULL;
    uint64_t expirations = 0;
    if (read(fd, &expirations, sizeof expirations) != (ssize_t)sizeof expirations) {
        if (errno == EAGAIN)
            return PyLong_FromLong(0);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromUnsignedLongLong(expirations);
}
