/* hvcore._speedups: makes Key objects (int subclass instances) without the cost of int.__new__.
 *
 * Optional: hvcore/_keymaker.py falls back to pure Python when this module is not built. Both give the same
 * objects: instances of the given int subclass with the given values. What this adds:
 *
 *  - no temporary int and no argument tuple per key (int.__new__(cls, v) builds both, then copies);
 *  - the generator's fast paths on its sequence table (hvcore/_sharedseq.py, one per layout and worker numbers in a
 *    process, whatever the clock, shared with forked children): shared_next and table_reserve, and the random starting point of each (shard,
 *    millisecond)'s sequence (splitmix64, seeded per process);
 *  - each new key is untracked by the cycle collector. A Key holds no reference but its (heap) type, so it can
 *    never be part of a cycle the collector must break (CPython untracks atomic-only tuples and dicts the same
 *    way). Millions of keys held by an application then cost nothing at each full collection either.
 *
 * The direct digit writes are for the int layouts of CPython 3.11 (ob_size) and 3.12-3.13 (lv_tag), each tested
 * (tests/core/test_keymaker.py runs under every installed CPython of those); on any other version, and on
 * free-threaded builds, every key goes through int.__new__'s own C code, which is always correct.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>
#include <time.h>

#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030E0000 && !defined(Py_GIL_DISABLED) && !defined(PYPY_VERSION)
#define HV_DIRECT 1
#else
#define HV_DIRECT 0
#endif

#define HV_MAX_VALUE 0x7FFFFFFFFFFFFFFFULL
#define HV_MAX_DIGITS ((63 + PyLong_SHIFT - 1) / PyLong_SHIFT)

/* Is `cls` an int subclass whose instances are laid out exactly like an int (no __dict__, no slots)? */
static int
check_key_type(PyObject *cls)
{
    if (!PyType_Check(cls) || !PyType_IsSubtype((PyTypeObject *)cls, &PyLong_Type)) {
        PyErr_Format(PyExc_TypeError, "expected an int subclass, got %R", cls);
        return -1;
    }
    PyTypeObject *type = (PyTypeObject *)cls;
    /* No __dict__ or __weakref__ either, inline or (3.11+) managed: a key must hold no reference but its type, or
       untracking it from the cycle collector would be wrong. */
    unsigned long managed = 0;
#ifdef Py_TPFLAGS_MANAGED_DICT
    managed |= Py_TPFLAGS_MANAGED_DICT;
#endif
#ifdef Py_TPFLAGS_MANAGED_WEAKREF
    managed |= Py_TPFLAGS_MANAGED_WEAKREF;
#endif
    if (type->tp_basicsize != PyLong_Type.tp_basicsize || type->tp_itemsize != PyLong_Type.tp_itemsize ||
        type->tp_dictoffset != 0 || type->tp_weaklistoffset != 0 || (type->tp_flags & managed) != 0) {
        PyErr_Format(PyExc_TypeError, "%R adds fields to int (give it __slots__ = ())", cls);
        return -1;
    }
    return 0;
}

static int
read_value(PyObject *obj, const char *what, unsigned long long *out)
{
    if (!PyLong_CheckExact(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, got %R", what, obj);
        return -1;
    }
    unsigned long long value = PyLong_AsUnsignedLongLong(obj);
    if (value == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s must be in 0..2**63-1, got %R", what, obj);
        return -1;
    }
    if (value > HV_MAX_VALUE) {
        PyErr_Format(PyExc_ValueError, "%s must be in 0..2**63-1, got %R", what, obj);
        return -1;
    }
    *out = value;
    return 0;
}

#if HV_DIRECT
/* Split `value` into int digits, least significant first; returns how many. */
static Py_ssize_t
split_digits(unsigned long long value, digit *digits)
{
    Py_ssize_t n = 0;
    while (value) {
        digits[n++] = (digit)(value & PyLong_MASK);
        value >>= PyLong_SHIFT;
    }
    return n;
}

static PyObject *
alloc_key(PyTypeObject *type, const digit *digits, Py_ssize_t n)
{
    PyLongObject *obj = (PyLongObject *)type->tp_alloc(type, n); /* zeroed, ob_size = n, type referenced */
    if (obj == NULL) {
        return NULL;
    }
#if PY_VERSION_HEX >= 0x030C0000
    /* 3.12+: the digit count and the sign share lv_tag (sign 0: positive, 1: zero); tp_alloc left room for a digit */
    obj->long_value.lv_tag = ((uintptr_t)n << _PyLong_NON_SIZE_BITS) | (n == 0 ? 1 : 0);
    for (Py_ssize_t i = 0; i < n; i++) {
        obj->long_value.ob_digit[i] = digits[i];
    }
#else
    for (Py_ssize_t i = 0; i < n; i++) {
        obj->ob_digit[i] = digits[i];
    }
#endif
    if (PyType_IS_GC(type)) {
        PyObject_GC_UnTrack(obj);
    }
    return (PyObject *)obj;
}
#endif

static PyObject *
new_key(PyTypeObject *type, unsigned long long value)
{
#if HV_DIRECT
    digit digits[HV_MAX_DIGITS];
    Py_ssize_t n = split_digits(value, digits);
    return alloc_key(type, digits, n);
#else
    PyObject *number = PyLong_FromUnsignedLongLong(value);
    if (number == NULL) {
        return NULL;
    }
    PyObject *args = PyTuple_Pack(1, number);
    Py_DECREF(number);
    if (args == NULL) {
        return NULL;
    }
    PyObject *key = PyLong_Type.tp_new(type, args, NULL);
    Py_DECREF(args);
    return key;
#endif
}

PyDoc_STRVAR(make_key_doc, "make_key(cls, value, /)\n--\n\nAn instance of the int subclass `cls` equal to `value`.");

static PyObject *
make_key(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    unsigned long long value;
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "make_key() takes 2 arguments (cls, value), got %zd", nargs);
        return NULL;
    }
    if (check_key_type(args[0]) < 0 || read_value(args[1], "value", &value) < 0) {
        return NULL;
    }
    return new_key((PyTypeObject *)args[0], value);
}

PyDoc_STRVAR(make_keys_doc,
             "make_keys(cls, start, count, /)\n--\n\n"
             "A list of `count` instances of the int subclass `cls`, equal to start, start + 1, ...");

static PyObject *
make_keys(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    unsigned long long start;
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "make_keys() takes 3 arguments (cls, start, count), got %zd", nargs);
        return NULL;
    }
    if (check_key_type(args[0]) < 0 || read_value(args[1], "start", &start) < 0) {
        return NULL;
    }
    Py_ssize_t count = PyLong_AsSsize_t(args[2]);
    if (count == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (count < 0 || (unsigned long long)count > HV_MAX_VALUE - start + 1) {
        PyErr_Format(PyExc_ValueError, "count must be in 0..2**63-start, got %zd", count);
        return NULL;
    }
    PyTypeObject *type = (PyTypeObject *)args[0];
    PyObject *list = PyList_New(count);
    if (list == NULL) {
        return NULL;
    }
#if HV_DIRECT
    digit digits[HV_MAX_DIGITS];
    Py_ssize_t n = split_digits(start, digits);
    /* Keys of one shard and millisecond differ only in their low sequence bits: when adding the offset to the
       lowest digit cannot carry, every key is that digit plus i (the common case); else each is split anew. */
    int same_high = n > 0 && count > 0 && (unsigned long long)digits[0] + (unsigned long long)(count - 1) <= PyLong_MASK;
    digit low = n > 0 ? digits[0] : 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *key;
        if (same_high) {
            digits[0] = low + (digit)i;
            key = alloc_key(type, digits, n);
        }
        else {
            key = new_key(type, start + (unsigned long long)i);
        }
        if (key == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, key);
    }
#else
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *key = new_key(type, start + (unsigned long long)i);
        if (key == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, key);
    }
#endif
    return list;
}

/* Set by exec_module; the module is never unloaded, so these strong references live as long as the process. */
static PyObject *time_ns_func = NULL; /* time.time_ns: read here with the same clock_gettime call it makes */

/* After a shard of a millisecond ran out, its generator starts milliseconds at 0 (the whole sequence) for the next
   HV_HOT_MS milliseconds instead of at a random point (the generator's _HOT_MS, exported as HOT_MS). */
#define HV_HOT_MS 10

/* -- random starting points: splitmix64 (Steele, Lea, Flood 2014; the seeding generator of xoshiro), one state per
   process, seeded from os.urandom by hvcore._keymaker at import and again in every child after fork(). It is
   called from table_take, where no Python call may be made (it runs inside a compare-and-swap loop). ------------ */
static uint64_t rng_state = 0x9E3779B97F4A7C15ULL;

static uint64_t
rng_next(void)
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* In 0..bound-1 (1 <= bound <= 2**32): the top 32 bits of a draw scaled by bound, a multiplication instead of a
   division (Lemire 2019, without the rejection step: a relative bias below 2**-22 for the bounds used, 1..1024).
   A build without this module draws from Python's random.Random instead (hvcore/_keymaker.py). */
static long long
rng_below(long long bound)
{
    return (long long)(((rng_next() >> 32) * (uint64_t)bound) >> 32);
}

PyDoc_STRVAR(seed_random_doc,
             "seed_random(seed, /)\n--\n\n"
             "Reseed this process's generator of random starting points (an int, taken modulo 2**64).");

static PyObject *
seed_random(PyObject *Py_UNUSED(module), PyObject *arg)
{
    unsigned long long seed = PyLong_AsUnsignedLongLongMask(arg);
    if (seed == (unsigned long long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    rng_state = (uint64_t)seed;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(random_below_doc,
             "random_below(bound, /)\n--\n\n"
             "A random int in 0..bound-1 from this process's splitmix64 state (bound in 1..2**32).");

static PyObject *
random_below(PyObject *Py_UNUSED(module), PyObject *arg)
{
    long long bound = PyLong_AsLongLong(arg);
    if (bound == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (bound < 1 || bound > (1LL << 32)) {
        PyErr_Format(PyExc_ValueError, "random_below(): bound must be in 1..2**32, got %lld", bound);
        return NULL;
    }
    return PyLong_FromLongLong(rng_below(bound));
}

/* The shard id as a C integer, or -1 when it is not a plain int in 0..limit-1 (the Python code then explains). */
static Py_ssize_t
plain_shard(PyObject *obj, Py_ssize_t limit)
{
    if (!PyLong_CheckExact(obj)) {
        return -1;
    }
    Py_ssize_t shard = PyLong_AsSsize_t(obj);
    if (shard == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    return shard < limit ? shard : -1;
}

/* Read the generator's clock in ns: time.time_ns as it does it (clock_gettime), any other callable by a call. */
static int
read_clock(PyObject *now, long long *out)
{
    if (now == time_ns_func) {
        struct timespec ts;
        if (clock_gettime(CLOCK_REALTIME, &ts) != 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        *out = (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
        return 0;
    }
    PyObject *reading = PyObject_CallNoArgs(now);
    if (reading == NULL) {
        return -1;
    }
    *out = PyLong_AsLongLong(reading);
    Py_DECREF(reading);
    return *out == -1 && PyErr_Occurred() ? -1 : 0;
}

/* -- the sequence table (hvcore/_sharedseq.py), lock-free ----------------------------------------------------------
 *
 * Every generator of one layout in a process takes its numbers from one table, a MAP_SHARED mapping that forked
 * children share too: int64 word 0 is the floor (milliseconds up to it belong to the process that made the
 * table), word 1 how many lanes are in use; from word 4, HV_LANES lanes of 4 words: the first and last millisecond
 * the lane owns, the last millisecond in which one of its shards ran out of numbers. Lanes own disjoint stretches
 * of time, for good (claimed under a lock by the Python code, which only ever widens them: a lane read here owns
 * at least what it appears to). Then, for each lane and shard, 16 bytes whose first word packs the newest
 * millisecond handed out for the shard in the lane and how many of its numbers are used: (time_part << used_bits)
 * | used. One compare-and-swap moves a shard forward, so no process ever waits for a lock another holds (or died
 * holding). A reservation gets nothing for a millisecond up to the floor or older than the shard's newest in the
 * lane: numbers only ever move forward. With `spread` > 0, the first reservation of a (shard, millisecond) starts
 * at a random number in 0..spread (cut so that the block asked for fits), or at `home` when it is >= 0 (a
 * worker="auto" lease's place), unless a shard of the lane ran out less than HV_HOT_MS milliseconds before: then
 * at 0. */

#define HV_LANES 32
/* 1: one table for every part of the sequence (numbers absolute, offset..offset+size-1 per caller); a build
   without it (each worker slice its own table) is stale for hvcore/_keymaker.py. */
#define HV_SLICES 1
#define HV_LANE_WORDS 4
#define HV_HEAD_WORDS (4 + HV_LANES * HV_LANE_WORDS)

/* The lane owning millisecond `part`, or -1 (the Python code then claims one). */
static long
table_lane(const int64_t *header, long long part)
{
    long long used = __atomic_load_n(&header[1], __ATOMIC_ACQUIRE);
    if (used > HV_LANES) {
        used = HV_LANES;
    }
    for (long lane = 0; lane < used; lane++) {
        const int64_t *at = header + 4 + lane * HV_LANE_WORDS;
        if (__atomic_load_n(&at[0], __ATOMIC_ACQUIRE) <= part && part <= __atomic_load_n(&at[1], __ATOMIC_ACQUIRE)) {
            return lane;
        }
    }
    return -1;
}

static int
table_entry(PyObject *table, Py_buffer *view, long lane, Py_ssize_t shards, Py_ssize_t shard, int64_t **header,
            uint64_t **entry)
{
    if (PyObject_GetBuffer(table, view, PyBUF_WRITABLE | PyBUF_SIMPLE) < 0) {
        return -1;
    }
    if (((uintptr_t)view->buf) % 8 != 0 || shard < 0 || shard >= shards || lane < 0 || lane >= HV_LANES ||
        view->len < (Py_ssize_t)(HV_HEAD_WORDS * 8) + ((Py_ssize_t)lane * shards + shard + 1) * 16) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "shard or lane out of the shared table's range");
        return -1;
    }
    *header = (int64_t *)view->buf;
    *entry = (uint64_t *)((char *)view->buf + HV_HEAD_WORDS * 8 + ((Py_ssize_t)lane * shards + shard) * 16);
    return 0;
}

/* Take up to `wanted` numbers of (shard, part) in lo..hi-1 (the caller's part of the sequence: a worker's slice, or
   all of it) from the shard's entry in lane `lane`, above every number of the millisecond handed out before to any
   caller: returns (first << 32) | how many; 0 when there are none to have. */
static long long
table_take(int64_t *header, long lane, uint64_t *entry, long long part, long long wanted, long long lo, long long hi,
           int used_bits, long long spread, long long home)
{
    if (part <= __atomic_load_n(&header[0], __ATOMIC_ACQUIRE)) {
        return 0;
    }
    int64_t *runout = header + 4 + lane * HV_LANE_WORDS + 2;
    uint64_t old = __atomic_load_n(entry, __ATOMIC_ACQUIRE);
    for (;;) {
        long long newest = (long long)(old >> used_bits);
        long long used = (long long)(old & ((1ULL << used_bits) - 1));
        long long first;
        if (part > newest) {
            first = lo;
            if (spread > 0 && part - __atomic_load_n(runout, __ATOMIC_RELAXED) > HV_HOT_MS) {
                long long fit = hi - wanted;
                first = lo + (home >= 0 ? home : rng_below(spread + 1));
                if (first > fit) {
                    first = fit > lo ? fit : lo;
                }
            }
        }
        else if (part == newest) {
            first = used > lo ? used : lo; /* above every number of the millisecond handed out, to anyone */
        }
        else {
            return 0;
        }
        long long take = hi - first < wanted ? hi - first : wanted;
        if (take < wanted && spread > 0) {
            __atomic_store_n(runout, (int64_t)part, __ATOMIC_RELAXED); /* this shard ran out: go whole */
        }
        if (take <= 0) {
            return 0;
        }
        uint64_t new = ((uint64_t)part << used_bits) | (uint64_t)(first + take);
        if (__atomic_compare_exchange_n(entry, &old, new, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            return (first << 32) | take; /* packed: the first number in the high half */
        }
    }
}

PyDoc_STRVAR(table_reserve_doc,
             "table_reserve(table, lane, shards, shard_id, time_part, wanted, size, used_bits, spread, home=-1,\n"
             "              offset=0, /)\n"
             "--\n\n"
             "Reserve up to `wanted` sequence numbers of (shard_id, time_part) in offset..offset+size-1 (the\n"
             "caller's part of the sequence) in lane `lane` of the shared table `table` (a writable buffer, with\n"
             "`shards` entries per lane), above every number of the millisecond reserved before; returns\n"
             "range(first, first + taken), empty when none can be had. The caller chose the lane owning time_part.\n"
             "`spread`: the largest random first number of a millisecond, from offset (0: always offset); `home`\n"
             "(>= 0): the first number (from offset) instead of a random one.");

static PyObject *
table_reserve(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 9 || nargs > 11) {
        PyErr_Format(PyExc_TypeError, "table_reserve() takes 9 to 11 arguments, got %zd", nargs);
        return NULL;
    }
    long lane = PyLong_AsLong(args[1]);
    Py_ssize_t shards = PyLong_AsSsize_t(args[2]);
    Py_ssize_t shard = PyLong_AsSsize_t(args[3]);
    long long part = PyLong_AsLongLong(args[4]);
    long long wanted = PyLong_AsLongLong(args[5]);
    long long size = PyLong_AsLongLong(args[6]);
    long used_bits = PyLong_AsLong(args[7]);
    long long spread = PyLong_AsLongLong(args[8]);
    long long home = nargs >= 10 ? PyLong_AsLongLong(args[9]) : -1;
    long long offset = nargs == 11 ? PyLong_AsLongLong(args[10]) : 0;
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (size < 1 || size > (1LL << 30) || offset < 0 || offset > (1LL << 30) || used_bits < 1 || used_bits > 32 ||
        offset + size >= (1LL << used_bits)) {
        PyErr_SetString(PyExc_ValueError,
                        "table_reserve(): offset + size must be in 1..2**used_bits-1, used_bits in 1..32");
        return NULL;
    }
    if (spread < 0 || spread >= size || home < -1 || home > spread) {
        PyErr_SetString(PyExc_ValueError, "table_reserve(): spread must be in 0..size-1, home in -1..spread");
        return NULL;
    }
    Py_buffer view;
    int64_t *header;
    uint64_t *entry;
    if (table_entry(args[0], &view, lane, shards, shard, &header, &entry) < 0) {
        return NULL;
    }
    long long packed =
        table_take(header, lane, entry, part, wanted < 1 ? 1 : wanted, offset, offset + size, (int)used_bits, spread, home);
    PyBuffer_Release(&view);
    long long first = packed >> 32, taken = packed & 0xFFFFFFFFLL;
    return PyObject_CallFunction((PyObject *)&PyRange_Type, "LL", first, first + taken);
}

PyDoc_STRVAR(shared_next_doc,
             "shared_next(shared, shard_id, n, /)\n--\n\n"
             "KeyGenerator's fast path on its sequence table: `n` keys (a Key for n == 0, else a list of\n"
             "up to n) straight from the table, or None when the Python code must take over (another shard id\n"
             "type, the millisecond used up or owned by no lane yet, the clock behind the table, past the last\n"
             "usable millisecond).\n"
             "`shared` = (now, key_type, table, params, marks): params packs 10 native int64s, (epoch_ns, time_shift,\n"
             "shard_shift, size, max_time, used_bits, offset, spread, home, floor); the keys' sequence numbers lie in\n"
             "offset..offset+size-1 (a worker's slice of the sequence bits, or all of it), above every number any\n"
             "generator of the table got in the millisecond before; `home` (>= 0) starts a millisecond instead of a random\n"
             "number, and milliseconds up to `floor` are not the generator's to use; `marks` (a bytearray, a byte per\n"
             "lane) records the lanes the generator used.");

static PyObject *
shared_next(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "shared_next() takes 3 arguments (shared, shard_id, n), got %zd", nargs);
        return NULL;
    }
    PyObject *shared = args[0], *shard_obj = args[1];
    if (!PyTuple_CheckExact(shared) || PyTuple_GET_SIZE(shared) != 5 ||
        !PyBytes_CheckExact(PyTuple_GET_ITEM(shared, 3)) ||
        PyBytes_GET_SIZE(PyTuple_GET_ITEM(shared, 3)) != 10 * (Py_ssize_t)sizeof(int64_t) ||
        !PyByteArray_CheckExact(PyTuple_GET_ITEM(shared, 4)) ||
        PyByteArray_GET_SIZE(PyTuple_GET_ITEM(shared, 4)) != HV_LANES) {
        PyErr_SetString(PyExc_TypeError, "shared_next() needs the generator's 5-item shared-table tuple");
        return NULL;
    }
    long long n = PyLong_AsLongLong(args[2]);
    if (n == -1 && PyErr_Occurred()) {
        return NULL;
    }
    PyObject *now = PyTuple_GET_ITEM(shared, 0), *key_type = PyTuple_GET_ITEM(shared, 1);
    int64_t p[10];
    memcpy(p, PyBytes_AS_STRING(PyTuple_GET_ITEM(shared, 3)), sizeof(p));
    long long epoch_ns = p[0], size = p[3], max_time = p[4], offset = p[6], spread = p[7];
    long long home = p[8], floor = p[9];
    long time_shift = (long)p[1], shard_shift = (long)p[2], used_bits = (long)p[5];
    if (time_shift <= shard_shift || time_shift > 62 || used_bits < 1 || used_bits > 32 || size < 1 ||
        offset < 0 || offset + size >= (1LL << used_bits) || spread < 0 || spread >= size || home < -1 || home > spread) {
        PyErr_SetString(PyExc_ValueError, "shared_next(): bad shared-table parameters");
        return NULL;
    }
    if (check_key_type(key_type) < 0) {
        return NULL;
    }
    Py_ssize_t shard = plain_shard(shard_obj, (Py_ssize_t)1 << (time_shift - shard_shift));
    if (shard < 0 || n < 0) {
        Py_RETURN_NONE;
    }
    long long t;
    if (read_clock(now, &t) < 0) {
        return NULL;
    }
    if (t < epoch_ns) {
        Py_RETURN_NONE;
    }
    long long part = (t - epoch_ns) / 1000000;
    if (part > max_time || part <= floor) {
        Py_RETURN_NONE;
    }

    Py_buffer view;
    int64_t *header;
    uint64_t *entry;
    Py_ssize_t shards = (Py_ssize_t)1 << (time_shift - shard_shift);
    if (table_entry(PyTuple_GET_ITEM(shared, 2), &view, 0, shards, shard, &header, &entry) < 0) {
        return NULL;
    }
    long lane = table_lane(header, part);
    if (lane < 0) { /* no lane owns the millisecond yet: the Python code claims one */
        PyBuffer_Release(&view);
        Py_RETURN_NONE;
    }
    char *marks = PyByteArray_AS_STRING(PyTuple_GET_ITEM(shared, 4));
    long long in_use = __atomic_load_n(&header[1], __ATOMIC_ACQUIRE);
    for (long other = 0; other < in_use && other < HV_LANES; other++) {
        if (marks[other] && other != lane &&
            __atomic_load_n(&header[4 + other * HV_LANE_WORDS], __ATOMIC_ACQUIRE) > part) {
            /* the generator used a later lane: its clock went back, and its keys must not; Python decides */
            PyBuffer_Release(&view);
            Py_RETURN_NONE;
        }
    }
    marks[lane] = 1; /* the generator uses it: not to be given up */
    entry += (Py_ssize_t)lane * shards * 2; /* the shard's entry in that lane (checked in range below) */
    if (view.len < (Py_ssize_t)(HV_HEAD_WORDS * 8) + ((Py_ssize_t)lane * shards + shard + 1) * 16) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "shard or lane out of the shared table's range");
        return NULL;
    }
    long long packed =
        table_take(header, lane, entry, part, n < 1 ? 1 : n, offset, offset + size, (int)used_bits, spread, home);
    PyBuffer_Release(&view);
    long long first = packed >> 32, taken = packed & 0xFFFFFFFFLL;
    unsigned long long base = ((unsigned long long)part << time_shift) | ((unsigned long long)shard << shard_shift);
    if (n == 0) {
        if (taken == 0) {
            Py_RETURN_NONE;
        }
        return new_key((PyTypeObject *)key_type, base + (unsigned long long)first);
    }
    if (taken == 0) {
        Py_RETURN_NONE;
    }
    PyObject *start = PyLong_FromUnsignedLongLong(base + (unsigned long long)first);
    PyObject *count = PyLong_FromLongLong(taken);
    PyObject *keys = NULL;
    if (start != NULL && count != NULL) {
        PyObject *call_args[3] = {key_type, start, count};
        keys = make_keys(NULL, call_args, 3);
    }
    Py_XDECREF(start);
    Py_XDECREF(count);
    return keys;
}

static PyMethodDef methods[] = {
    {"table_reserve", (PyCFunction)(void (*)(void))table_reserve, METH_FASTCALL, table_reserve_doc},
    {"shared_next", (PyCFunction)(void (*)(void))shared_next, METH_FASTCALL, shared_next_doc},
    {"make_key", (PyCFunction)(void (*)(void))make_key, METH_FASTCALL, make_key_doc},
    {"make_keys", (PyCFunction)(void (*)(void))make_keys, METH_FASTCALL, make_keys_doc},
    {"seed_random", seed_random, METH_O, seed_random_doc},
    {"random_below", random_below, METH_O, random_below_doc},
    {NULL, NULL, 0, NULL},
};

static PyObject *
import_attr(const char *module_name, const char *name)
{
    PyObject *module = PyImport_ImportModule(module_name);
    if (module == NULL) {
        return NULL;
    }
    PyObject *attr = PyObject_GetAttrString(module, name);
    Py_DECREF(module);
    return attr;
}

static int
exec_module(PyObject *module)
{
    if (time_ns_func == NULL) {
        time_ns_func = import_attr("time", "time_ns");
        if (time_ns_func == NULL) {
            return -1;
        }
    }
    if (PyModule_AddIntConstant(module, "HOT_MS", HV_HOT_MS) < 0 ||
        PyModule_AddIntConstant(module, "LANES", HV_LANES) < 0 ||
        PyModule_AddIntConstant(module, "SLICES", HV_SLICES) < 0) {
        return -1;
    }
    return PyModule_AddIntConstant(module, "DIRECT", HV_DIRECT);
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, exec_module},
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "hvcore._speedups",
    .m_doc = "Makes Key objects in C (optional; hvcore._keymaker falls back to pure Python).",
    .m_size = 0,
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&module_def);
}
