/* _FORTIFY_SOURCE for musl, which has none: checked forms of the calls the
 * init makes into buffers whose size the compiler knows (as glibc's
 * fortify and Alpine's fortify-headers check them). A call that would write
 * past the end of its buffer traps instead (SIGILL), where musl would
 * corrupt memory. build-init.sh puts this in front of every file
 * (-include) with -D_FORTIFY_SOURCE=2; it does nothing without it, when
 * not optimizing (the sizes are known only then), or with glibc (which
 * has its own). */
#ifndef HBD_FORTIFY_H
#define HBD_FORTIFY_H

/* Included before anything of the file's own: its headers must be read as
 * the files that define _GNU_SOURCE (most of the init) want them. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <features.h>

#if defined(_FORTIFY_SOURCE) && _FORTIFY_SOURCE > 0 && defined(__OPTIMIZE__) && !defined(__GLIBC__)

#include <sched.h> /* declares memcpy and memset again */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/xattr.h>
#include <unistd.h>

/* Whole object for mem*, the enclosing member (level 2) for strings,
 * as glibc does; (size_t)-1 when unknown, which never traps. */
#define HBD_BOS0(p) __builtin_object_size(p, 0)
#define HBD_BOS(p) __builtin_object_size(p, _FORTIFY_SOURCE > 1)

static inline __attribute__((always_inline)) size_t hbd_chk(size_t need, size_t have)
{
	if (need > have)
		__builtin_trap();
	return need;
}

#define memcpy(d, s, n) memcpy(d, s, hbd_chk(n, HBD_BOS0(d)))
#define memmove(d, s, n) memmove(d, s, hbd_chk(n, HBD_BOS0(d)))
#define memset(d, c, n) memset(d, c, hbd_chk(n, HBD_BOS0(d)))
#define read(fd, b, n) read(fd, b, hbd_chk(n, HBD_BOS0(b)))
#define recv(fd, b, n, f) recv(fd, b, hbd_chk(n, HBD_BOS0(b)), f)
#define readlink(p, b, n) readlink(p, b, hbd_chk(n, HBD_BOS(b)))
#define fgets(b, n, f) fgets(b, (int)hbd_chk((size_t)(n), HBD_BOS(b)), f)
#define snprintf(b, n, ...) snprintf(b, hbd_chk(n, HBD_BOS(b)), __VA_ARGS__)
#define vsnprintf(b, n, f, ap) vsnprintf(b, hbd_chk(n, HBD_BOS(b)), f, ap)
#define getxattr(p, k, b, n) getxattr(p, k, b, hbd_chk(n, HBD_BOS0(b)))

#endif
#endif
