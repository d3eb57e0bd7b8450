/* Copy-up of a fresh volume: when an empty volume is mounted over a path the
 * image has content at, dockerd first copies that content into the volume
 * (unless the mount says nocopy). The guest does it here, before the volume
 * is mounted over the path, from the container's own view of its rootfs.
 *
 * Everything is fd-relative and never follows a symlink: a symlink in the
 * image is copied as a symlink, not resolved. Hard links become separate
 * copies and extended attributes are not copied. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "init.h"
#include "util.h"

#define COPY_MAX_DEPTH 128

static int copy_attrs(int dir, const char *name, const struct stat *st)
{
	if (fchownat(dir, name, st->st_uid, st->st_gid, AT_SYMLINK_NOFOLLOW))
		return -1;
	if (!S_ISLNK(st->st_mode) && fchmodat(dir, name, st->st_mode & 07777, 0))
		return -1;
	struct timespec times[2] = {st->st_atim, st->st_mtim};
	return utimensat(dir, name, times, AT_SYMLINK_NOFOLLOW);
}

static int copy_file(int src_dir, int dst_dir, const char *name, const struct stat *st)
{
	int in = openat(src_dir, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (in < 0)
		return -1;
	int out = openat(dst_dir, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
			 0600);
	if (out < 0) {
		close(in);
		return -1;
	}
	char buf[65536];
	ssize_t n;
	int rc = 0;
	while ((n = read(in, buf, sizeof(buf))) > 0) {
		if (write_all(out, buf, (size_t)n)) {
			rc = -1;
			break;
		}
	}
	if (n < 0)
		rc = -1;
	close(in);
	if (close(out))
		rc = -1;
	return rc ? rc : copy_attrs(dst_dir, name, st);
}

static int copy_dir(int src, int dst, int depth, char *failed, size_t cap)
{
	if (depth > COPY_MAX_DEPTH) {
		errno = ELOOP;
		return -1;
	}
	int scan = dup(src);
	DIR *d = scan >= 0 ? fdopendir(scan) : NULL;
	if (!d) {
		if (scan >= 0)
			close(scan);
		return -1;
	}
	int rc = 0;
	struct dirent *ent;
	while (!rc && (ent = readdir(d))) {
		const char *name = ent->d_name;
		if (!strcmp(name, ".") || !strcmp(name, ".."))
			continue;
		snprintf(failed, cap, "%s", name);
		struct stat st;
		if (fstatat(src, name, &st, AT_SYMLINK_NOFOLLOW)) {
			rc = -1;
			break;
		}
		if (S_ISDIR(st.st_mode)) {
			if (mkdirat(dst, name, 0700) && errno != EEXIST) {
				rc = -1;
				break;
			}
			int s = openat(src, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			int t = openat(dst, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			rc = s < 0 || t < 0 ? -1 : copy_dir(s, t, depth + 1, failed, cap);
			if (s >= 0)
				close(s);
			if (t >= 0)
				close(t);
			if (!rc)
				rc = copy_attrs(dst, name, &st);
		} else if (S_ISREG(st.st_mode)) {
			rc = copy_file(src, dst, name, &st);
		} else if (S_ISLNK(st.st_mode)) {
			char link[4096];
			ssize_t n = readlinkat(src, name, link, sizeof(link) - 1);
			if (n < 0) {
				rc = -1;
				break;
			}
			link[n] = 0;
			rc = symlinkat(link, dst, name) ? -1 : copy_attrs(dst, name, &st);
		} else {
			rc = mknodat(dst, name, st.st_mode, st.st_rdev) ? -1 : copy_attrs(dst, name, &st);
		}
	}
	closedir(d);
	return rc;
}

/* Is a freshly made volume still empty? mkfs leaves lost+found in it. */
static int volume_is_empty(int dir)
{
	int scan = dup(dir);
	DIR *d = scan >= 0 ? fdopendir(scan) : NULL;
	if (!d) {
		if (scan >= 0)
			close(scan);
		return 0;
	}
	int empty = 1;
	struct dirent *ent;
	while (empty && (ent = readdir(d)))
		empty = !strcmp(ent->d_name, ".") || !strcmp(ent->d_name, "..") ||
			!strcmp(ent->d_name, "lost+found");
	closedir(d);
	return empty;
}

int copy_up(const char *source, const char *volume, struct err *e)
{
	int src = open(source, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (src < 0)
		return 0; /* nothing at that path in the image, or not a directory */
	int dst = open(volume, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dst < 0) {
		set_err(e, "system", errno, "open %s: %s", volume, strerror(errno));
		close(src);
		return -1;
	}
	int rc = 0;
	char failed[256] = "";
	if (volume_is_empty(dst) && copy_dir(src, dst, 0, failed, sizeof(failed))) {
		set_err(e, "system", errno, "copying %s into its volume (at %s): %s", source,
			failed, strerror(errno));
		rc = -1;
	}
	/* The volume's root takes the owner and mode of the directory it covers,
	 * as dockerd's copyOwnership does. */
	struct stat st;
	if (!rc && !fstat(src, &st) &&
	    (fchown(dst, st.st_uid, st.st_gid) || fchmod(dst, st.st_mode & 07777))) {
		set_err(e, "system", errno, "chown of volume at %s: %s", source, strerror(errno));
		rc = -1;
	}
	close(src);
	close(dst);
	return rc;
}
