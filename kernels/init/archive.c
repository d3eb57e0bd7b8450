/* Built-in programs the init runs for the host (START with "builtin"): tar
 * streams in and out of the container (docker cp, export, commit), file
 * stat, and the list of changes (docker diff). The host never mounts or
 * parses a filesystem a guest has written; these run in the guest.
 *
 * They run in a child process, chrooted into the container's root (or at
 * the scratch disk for diff/commit), with stdout/stderr piped to the host
 * like any process. Tars are POSIX ustar with PAX records for long names. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "init.h"
#include "util.h"

#define BLOCK 512
/* The container the builtin works on (run_builtin sets them). */
static char layer_upper[160], layer_lower[160], created_list[160], container_cgroup[160];
/* Build a path; true when it did not fit (the caller skips that entry). */
#define PATHF(buf, ...) (snprintf(buf, sizeof(buf), __VA_ARGS__) >= (int)sizeof(buf))
#define PATHF_N(buf, cap, ...) (snprintf(buf, cap, __VA_ARGS__) >= (int)(cap))

/* -- writing -------------------------------------------------------------- */

struct hardlinks {
	dev_t dev[4096];
	ino_t ino[4096];
	char *name[4096];
	int n;
};

static void hardlinks_free(struct hardlinks *links)
{
	for (int i = 0; i < links->n; i++)
		free(links->name[i]);
	links->n = 0;
}

static void octal(char *field, size_t width, unsigned long long value)
{
	snprintf(field, width, "%0*llo", (int)width - 1, value);
}

static void checksum(unsigned char *h)
{
	memset(h + 148, ' ', 8);
	unsigned sum = 0;
	for (int i = 0; i < BLOCK; i++)
		sum += h[i];
	snprintf((char *)h + 148, 8, "%06o", sum);
	h[154] = 0;
	h[155] = ' ';
}

static int pax_record(struct buf *b, const char *key, const char *value)
{
	/* "%d %s=%s\n" where the length counts its own digits. */
	size_t body = strlen(key) + strlen(value) + 3;
	size_t len = body + 1;
	while (1) {
		char digits[32];
		size_t d = (size_t)snprintf(digits, sizeof(digits), "%zu", len);
		if (body + d == len)
			break;
		len = body + d;
	}
	buf_printf(b, "%zu %s=%s\n", len, key, value);
	return 0;
}

static int write_block_padded(int fd, const void *data, size_t len)
{
	if (write_all(fd, data, len))
		return -1;
	static const char zeros[BLOCK];
	size_t pad = (BLOCK - len % BLOCK) % BLOCK;
	return pad ? write_all(fd, zeros, pad) : 0;
}

static int emit_header(int fd, const char *name, const char *link, const struct stat *st,
		       char type)
{
	unsigned char h[BLOCK];
	struct buf pax = {0};
	int long_name = strlen(name) > 99, long_link = link && strlen(link) > 99;
	if (long_name)
		pax_record(&pax, "path", name);
	if (long_link)
		pax_record(&pax, "linkpath", link);
	if (pax.len) {
		memset(h, 0, sizeof(h));
		snprintf((char *)h, 100, "PaxHeader");
		octal((char *)h + 100, 8, 0644);
		octal((char *)h + 108, 8, 0);
		octal((char *)h + 116, 8, 0);
		octal((char *)h + 124, 12, pax.len);
		octal((char *)h + 136, 12, (unsigned long long)st->st_mtime);
		h[156] = 'x';
		memcpy(h + 257, "ustar", 6);
		memcpy(h + 263, "00", 2);
		checksum(h);
		if (write_all(fd, h, BLOCK) || write_block_padded(fd, pax.data, pax.len)) {
			buf_free(&pax);
			return -1;
		}
		buf_free(&pax);
	}
	memset(h, 0, sizeof(h));
	snprintf((char *)h, 100, "%.99s", name);
	octal((char *)h + 100, 8, st->st_mode & 07777);
	octal((char *)h + 108, 8, st->st_uid > 07777777 ? 0 : st->st_uid);
	octal((char *)h + 116, 8, st->st_gid > 07777777 ? 0 : st->st_gid);
	octal((char *)h + 124, 12, type == '0' ? (unsigned long long)st->st_size : 0);
	octal((char *)h + 136, 12, st->st_mtime > 0 ? (unsigned long long)st->st_mtime : 0);
	h[156] = (unsigned char)type;
	if (link)
		snprintf((char *)h + 157, 100, "%.99s", link);
	memcpy(h + 257, "ustar", 6);
	memcpy(h + 263, "00", 2);
	if (type == '3' || type == '4') {
		octal((char *)h + 329, 8, major(st->st_rdev));
		octal((char *)h + 337, 8, minor(st->st_rdev));
	}
	checksum(h);
	return write_all(fd, h, BLOCK);
}

static int emit_file_body(int fd, const char *path, off_t size)
{
	int in = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (in < 0)
		return -1;
	char chunk[65536];
	off_t left = size;
	while (left > 0) {
		ssize_t n = read(in, chunk, (size_t)(left < (off_t)sizeof(chunk) ? left : (off_t)sizeof(chunk)));
		if (n <= 0) {
			/* Shrunk while we read: pad with zeros so the archive stays whole. */
			memset(chunk, 0, sizeof(chunk));
			n = (ssize_t)(left < (off_t)sizeof(chunk) ? left : (off_t)sizeof(chunk));
		}
		if (write_all(fd, chunk, (size_t)n)) {
			close(in);
			return -1;
		}
		left -= n;
	}
	close(in);
	static const char zeros[BLOCK];
	size_t pad = (size_t)((BLOCK - size % BLOCK) % BLOCK);
	return pad ? write_all(fd, zeros, pad) : 0;
}

/* Callback deciding what to do with one entry of a walk: 0 skips it, 1
 * keeps it, KEEP_NO_DESCENT keeps a directory but not what is below it. Its
 * archive name may be changed, or it may become an empty whiteout file. */
#define KEEP_NO_DESCENT 2
typedef int (*entry_filter)(const char *real, const char *name, const struct stat *st,
			    char *out_name, size_t cap, int *whiteout);

static int emit_entry(int fd, const char *real, const char *name, struct stat *st,
		      struct hardlinks *links)
{
	if (S_ISDIR(st->st_mode)) {
		char dirname[PATH_MAX + 2];
		snprintf(dirname, sizeof(dirname), "%s/", name);
		return emit_header(fd, dirname, NULL, st, '5');
	}
	if (S_ISLNK(st->st_mode)) {
		char target[PATH_MAX];
		ssize_t n = readlink(real, target, sizeof(target) - 1);
		if (n < 0)
			return 0;
		target[n] = 0;
		return emit_header(fd, name, target, st, '2');
	}
	if (S_ISREG(st->st_mode)) {
		if (st->st_nlink > 1) {
			for (int i = 0; i < links->n; i++)
				if (links->dev[i] == st->st_dev && links->ino[i] == st->st_ino)
					return emit_header(fd, name, links->name[i], st, '1');
			if (links->n < 4096) {
				links->dev[links->n] = st->st_dev;
				links->ino[links->n] = st->st_ino;
				links->name[links->n++] = strdup(name);
			}
		}
		if (emit_header(fd, name, NULL, st, '0'))
			return -1;
		return emit_file_body(fd, real, st->st_size);
	}
	if (S_ISCHR(st->st_mode))
		return emit_header(fd, name, NULL, st, '3');
	if (S_ISBLK(st->st_mode))
		return emit_header(fd, name, NULL, st, '4');
	if (S_ISFIFO(st->st_mode))
		return emit_header(fd, name, NULL, st, '6');
	return 0; /* sockets have no tar form */
}

static int walk(int fd, const char *real, const char *name, struct hardlinks *links,
		entry_filter filter)
{
	struct dirent **entries;
	int n = scandir(real, &entries, NULL, alphasort);
	if (n < 0)
		return 0;
	/* A level's paths live on the heap: a tree can be PATH_MAX/2 levels
	 * deep, and 12 KiB of stack a level would overflow the stack. */
	struct {
		char real[PATH_MAX], name[PATH_MAX], out[PATH_MAX];
		struct stat st;
	} *f = malloc(sizeof(*f));
	int rc = f ? 0 : -1;
	for (int i = 0; i < n; i++) {
		const char *d = entries[i]->d_name;
		if (!rc && strcmp(d, ".") && strcmp(d, "..") &&
		    !PATHF(f->real, "%s/%s", real, d) &&
		    !PATHF(f->name, "%s%s%s", name, *name ? "/" : "", d) && !lstat(f->real, &f->st)) {
			int whiteout = 0;
			snprintf(f->out, sizeof(f->out), "%s", f->name);
			int keep = filter ? filter(f->real, f->name, &f->st, f->out, sizeof(f->out),
						   &whiteout)
					  : 1;
			if (keep && whiteout) {
				struct stat empty = f->st;
				empty.st_mode = S_IFREG | 0;
				empty.st_size = 0;
				empty.st_uid = empty.st_gid = 0;
				rc = emit_header(fd, f->out, NULL, &empty, '0');
			} else if (keep) {
				rc = emit_entry(fd, f->real, f->out, &f->st, links);
				if (!rc && S_ISDIR(f->st.st_mode) && keep != KEEP_NO_DESCENT)
					rc = walk(fd, f->real, f->name, links, filter);
			}
		}
		free(entries[i]);
	}
	free(entries);
	free(f);
	return rc;
}

static int end_archive(int fd)
{
	static const char zeros[2 * BLOCK];
	return write_all(fd, zeros, sizeof(zeros));
}

/* `docker cp c:PATH -`: the entry named after PATH's last component, and
 * below it a directory's content. PATH ending in "/." archives the content
 * alone, as docker does. */
static int tar_create(int out, const char *path)
{
	char copy[PATH_MAX];
	snprintf(copy, sizeof(copy), "%s", path);
	size_t len = strlen(copy);
	int contents_only = len >= 2 && !strcmp(copy + len - 2, "/.");
	while (len > 1 && copy[len - 1] == '/')
		copy[--len] = 0;
	struct stat st;
	int follow = path[strlen(path) - 1] == '/' || contents_only;
	if ((follow ? stat(copy, &st) : lstat(copy, &st))) {
		fprintf(stderr, "Could not find the file %s in container\n", path);
		return 2;
	}
	struct hardlinks links = {0};
	const char *base = strrchr(copy, '/');
	base = base && base[1] ? base + 1 : copy;
	if (!strcmp(copy, "/"))
		base = ".";
	int rc = 0;
	if (contents_only && S_ISDIR(st.st_mode)) {
		rc = walk(out, copy, "", &links, NULL);
	} else {
		rc = emit_entry(out, copy, base, &st, &links);
		if (!rc && S_ISDIR(st.st_mode))
			rc = walk(out, copy, strcmp(base, ".") ? base : "", &links, NULL);
	}
	if (!rc)
		rc = end_archive(out);
	hardlinks_free(&links);
	return rc ? 1 : 0;
}

/* -- the container's changes, from the scratch disk's upper directory ------ */

static char **created;
static int ncreated;

/* Paths hbd itself made for mounting (placeholders for /etc/hosts and
 * friends, mount points): dockerd keeps these in an init layer that diff and
 * commit never show, so they are left out here too. */
static void load_created(void)
{
	char text[65536];
	if (read_file(created_list, text, sizeof(text)) <= 0)
		return;
	for (char *save = NULL, *line = strtok_r(text, "\n", &save); line;
	     line = strtok_r(NULL, "\n", &save)) {
		created = realloc(created, sizeof(char *) * (size_t)(ncreated + 1));
		created[ncreated++] = strdup(line);
	}
}

static int is_created(const char *name)
{
	for (int i = 0; i < ncreated; i++)
		if (!strcmp(created[i] + (created[i][0] == '/'), name))
			return 1;
	return 0;
}

static int is_whiteout(const struct stat *st)
{
	return S_ISCHR(st->st_mode) && st->st_rdev == makedev(0, 0);
}

static int is_opaque(const char *real)
{
	char value[8];
	ssize_t n = getxattr(real, "trusted.overlay.opaque", value, sizeof(value));
	return n == 1 && value[0] == 'y';
}

static int in_lower(const char *name, struct stat *out)
{
	char path[PATH_MAX];
	return !PATHF(path, "%s/%s", layer_lower, name) && !lstat(path, out);
}

static void change_record(struct buf *out, const char *name, int kind)
{
	char path[PATH_MAX + 1];
	snprintf(path, sizeof(path), "/%s", name);
	buf_str(out, "{\"path\":");
	buf_json_string(out, path);
	buf_printf(out, ",\"kind\":%d}\n", kind);
}

/* An opaque directory hides all the image had there: each such entry that
 * the container did not recreate is a deletion. */
static int list_opaque_deletions(const char *name, const char *upper_dir, struct buf *out)
{
	char lower_dir[PATH_MAX];
	struct dirent **gone;
	if (PATHF(lower_dir, "%s/%s", layer_lower, name))
		return 0;
	int m = scandir(lower_dir, &gone, NULL, alphasort);
	int count = 0;
	for (int j = 0; j < m; j++) {
		const char *d = gone[j]->d_name;
		char path[PATH_MAX], upper_path[PATH_MAX];
		struct stat ignored;
		if (strcmp(d, ".") && strcmp(d, "..") && !PATHF(path, "%s/%s", name, d) &&
		    !PATHF(upper_path, "%s/%s", upper_dir, d) && lstat(upper_path, &ignored)) {
			change_record(out, path, 2);
			count++;
		}
		free(gone[j]);
	}
	if (m >= 0)
		free(gone);
	return count;
}

/* Changes below `real`, into `out`; returns how many. A directory the image
 * had counts as changed only when something below it did (its mtime moves
 * whenever hbd adds a mount point, which no diff should show). */
static int list_changes(const char *real, const char *name, struct buf *out)
{
	struct dirent **entries;
	int n = scandir(real, &entries, NULL, alphasort);
	int count = 0;
	/* On the heap, as walk's: trees can be deep. */
	struct {
		char real[PATH_MAX], name[PATH_MAX];
		struct stat st, lower;
	} *f = n > 0 ? malloc(sizeof(*f)) : NULL;
	for (int i = 0; i < n; i++) {
		const char *d = entries[i]->d_name;
		if (!f || !strcmp(d, ".") || !strcmp(d, "..") || PATHF(f->real, "%s/%s", real, d) ||
		    PATHF(f->name, "%s%s%s", name, *name ? "/" : "", d) || lstat(f->real, &f->st) ||
		    is_created(f->name)) {
			free(entries[i]);
			continue;
		}
		if (is_whiteout(&f->st)) {
			change_record(out, f->name, 2);
			count++;
		} else if (!S_ISDIR(f->st.st_mode)) {
			change_record(out, f->name, in_lower(f->name, &f->lower) ? 0 : 1);
			count++;
		} else {
			int existed = in_lower(f->name, &f->lower);
			struct buf below = {0};
			int opaque = existed && is_opaque(f->real);
			if (opaque)
				count += list_opaque_deletions(f->name, f->real, &below);
			int inner = list_changes(f->real, f->name, &below);
			if (!existed || opaque || inner) {
				change_record(out, f->name, existed ? 0 : 1);
				count++;
			}
			if (below.len)
				buf_add(out, below.data, below.len);
			count += inner;
			buf_free(&below);
		}
		free(entries[i]);
	}
	if (n >= 0)
		free(entries);
	free(f);
	return count;
}

/* A layer from the upper directory: overlay's whiteouts (0:0 character
 * devices) and opaque directories become the OCI's .wh. entries. */
static int commit_filter(const char *real, const char *name, const struct stat *st,
			 char *out_name, size_t cap, int *whiteout)
{
	if (is_created(name))
		return 0;
	if (is_whiteout(st)) {
		const char *slash = strrchr(name, '/');
		if (slash)
			snprintf(out_name, cap, "%.*s/.wh.%s", (int)(slash - name), name, slash + 1);
		else
			snprintf(out_name, cap, ".wh.%s", name);
		*whiteout = 1;
		return 1;
	}
	if (S_ISDIR(st->st_mode) && is_opaque(real)) {
		/* Emitted before the walk descends, right after the directory. */
		/* On the heap: opaque directories nest, and the table is big. */
		char *marker = malloc(PATH_MAX);
		struct hardlinks *none = calloc(1, sizeof(*none));
		struct stat empty = *st;
		empty.st_mode = S_IFREG;
		empty.st_size = 0;
		if (marker && none && !PATHF_N(marker, PATH_MAX, "%s/.wh..wh..opq", name) &&
		    !emit_entry(1, real, name, (struct stat *)st, none) &&
		    !emit_header(1, marker, NULL, &empty, '0'))
			walk(1, real, name, none, commit_filter);
		free(marker);
		if (none)
			hardlinks_free(none);
		free(none);
		return 0; /* done here: the caller must not emit it again */
	}
	return 1;
}

static int freeze(int on)
{
	char path[192];
	snprintf(path, sizeof(path), "%s/cgroup.freeze", container_cgroup);
	return write_file(path, on ? "1" : "0", 1, 0644);
}

/* With `freeze`, the container's processes stand still while the layer is
 * read (docker commit --pause); this builtin runs outside their cgroup. */
static int tar_changes(int frozen)
{
	load_created();
	if (frozen && freeze(1))
		LOG("cannot freeze the container: %s", strerror(errno));
	struct hardlinks links = {0};
	int rc = walk(1, layer_upper, "", &links, commit_filter);
	if (!rc)
		rc = end_archive(1);
	if (frozen)
		freeze(0);
	return rc ? 1 : 0;
}

/* `docker export`: the container's own filesystem, not what is mounted on
 * it (/proc, /sys, volumes, binds): mount points come out empty. Which
 * paths are mount points is read before entering the container's root
 * (overlayfs reports the lower layer's device for files, so st_dev cannot
 * tell). */
static char **mount_points;
static int nmount_points;

void builtin_note_mounts(const char *mountinfo, const char *prefix)
{
	char text[65536];
	if (read_file(mountinfo, text, sizeof(text)) <= 0)
		return;
	size_t plen = strlen(prefix);
	for (char *save = NULL, *line = strtok_r(text, "\n", &save); line;
	     line = strtok_r(NULL, "\n", &save)) {
		char *field = line;
		for (int i = 0; i < 4 && field; i++) {
			field = strchr(field, ' ');
			if (field)
				field++;
		}
		if (!field)
			continue;
		char *end = strchr(field, ' ');
		if (end)
			*end = 0;
		if (strncmp(field, prefix, plen) || (field[plen] != '/' && field[plen] != 0))
			continue;
		const char *inside = field + plen;
		if (!*inside || !strcmp(inside, "/"))
			continue; /* the root itself */
		mount_points = realloc(mount_points, sizeof(char *) * (size_t)(nmount_points + 1));
		mount_points[nmount_points++] = strdup(inside + 1); /* without the leading / */
	}
}

static int export_filter(const char *real, const char *name, const struct stat *st,
			 char *out_name, size_t cap, int *whiteout)
{
	(void)real;
	(void)out_name;
	(void)cap;
	(void)whiteout;
	for (int i = 0; i < nmount_points; i++)
		if (!strcmp(mount_points[i], name))
			return S_ISDIR(st->st_mode) ? KEEP_NO_DESCENT : 0;
	return 1;
}

static int tar_export(void)
{
	struct hardlinks links = {0};
	int rc = walk(1, "/", "", &links, export_filter);
	if (!rc)
		rc = end_archive(1);
	return rc ? 1 : 0;
}

/* -- reading --------------------------------------------------------------- */

static unsigned long long parse_octal(const char *field, size_t width)
{
	unsigned long long v = 0;
	for (size_t i = 0; i < width && field[i]; i++) {
		if (field[i] == ' ')
			continue;
		if (field[i] < '0' || field[i] > '7')
			break;
		v = v * 8 + (unsigned long long)(field[i] - '0');
	}
	return v;
}

static int read_full(int fd, void *buf, size_t len)
{
	char *p = buf;
	while (len) {
		ssize_t n = read(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int discard(int fd, unsigned long long n)
{
	char chunk[65536];
	while (n) {
		size_t take = n < sizeof(chunk) ? (size_t)n : sizeof(chunk);
		if (read_full(fd, chunk, take))
			return -1;
		n -= take;
	}
	return 0;
}

static unsigned long long padding(unsigned long long size)
{
	return (BLOCK - size % BLOCK) % BLOCK;
}

/* Archive names are made relative and cleaned lexically, as Go's
 * filepath.Join cleans them in dockerd: "a/../b" is "b", and a name whose
 * ".." climbs above the extraction point is refused, as dockerd refuses it
 * ("is outside of"). */
static int clean_name(const char *name, char *out, size_t cap)
{
	char copy[PATH_MAX];
	if (PATHF(copy, "%s", name))
		return -1;
	out[0] = 0;
	size_t used = 0;
	for (char *save = NULL, *part = strtok_r(copy, "/", &save); part;
	     part = strtok_r(NULL, "/", &save)) {
		if (!strcmp(part, ".") || !*part)
			continue;
		if (!strcmp(part, "..")) {
			if (!used)
				return -1;
			char *slash = strrchr(out, '/');
			used = slash ? (size_t)(slash - out) : 0;
			out[used] = 0;
			continue;
		}
		int n = snprintf(out + used, cap - used, "%s%s", used ? "/" : "", part);
		if (n < 0 || (size_t)n >= cap - used)
			return -1;
		used += (size_t)n;
	}
	return used ? 0 : 1;
}

/* openat2 (Linux >= 5.6): musl has neither the wrapper nor the ABI. */
struct open_how_ {
	unsigned long long flags, mode, resolve;
};
#define RESOLVE_NO_MAGICLINKS_ 0x02
#define RESOLVE_IN_ROOT_ 0x10

/* PATH opened as if ROOT were "/": "..", absolute symlinks and symlinks in
 * any parent resolve inside ROOT, never above it, and /proc's magic links
 * are refused. This is how an archive is unpacked: every entry is created
 * by name in a directory reached this way, so nothing lands outside ROOT
 * whatever symlinks the archive or the container put on the way. */
static int open_in_root(int root, const char *path, int flags)
{
	struct open_how_ how = {.flags = (unsigned long long)(flags | O_CLOEXEC),
				.resolve = RESOLVE_IN_ROOT_ | RESOLVE_NO_MAGICLINKS_};
	for (int tries = 0;; tries++) {
		int fd = (int)syscall(SYS_openat2, root, *path ? path : ".", &how, sizeof(how));
		/* EAGAIN: a rename raced the lookup of "..". */
		if (fd >= 0 || errno != EAGAIN || tries == 16)
			return fd;
	}
}

/* The directory that will hold NAME (a clean relative name) below DEST,
 * both resolved in ROOT; with `create`, missing directories on the way are
 * made (0755, root's, as dockerd makes them). *leaf is NAME's last part. */
static int open_parent(int root, const char *dest, const char *name, int create,
		       const char **leaf)
{
	const char *slash = strrchr(name, '/');
	*leaf = slash ? slash + 1 : name;
	if (!slash)
		return open_in_root(root, dest, O_PATH | O_DIRECTORY);
	char path[PATH_MAX];
	size_t dlen = strlen(dest), plen = (size_t)(slash - name);
	if (dlen + 1 + plen >= sizeof(path)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	memcpy(path, dest, dlen);
	path[dlen] = '/';
	memcpy(path + dlen + 1, name, plen);
	path[dlen + 1 + plen] = 0;
	int fd = open_in_root(root, path, O_PATH | O_DIRECTORY);
	if (fd >= 0 || errno != ENOENT || !create)
		return fd;
	/* Some directory is missing: one part at a time, each made by name in
	 * its resolved parent. */
	fd = open_in_root(root, dest, O_PATH | O_DIRECTORY);
	for (char *part = path + dlen + 1; fd >= 0;) {
		char *end = strchr(part, '/');
		if (end)
			*end = 0;
		int next = open_in_root(root, path, O_PATH | O_DIRECTORY);
		if (next < 0 && errno == ENOENT) {
			if (mkdirat(fd, part, 0755) && errno != EEXIST) {
				close(fd);
				return -1;
			}
			next = open_in_root(root, path, O_PATH | O_DIRECTORY);
		}
		close(fd);
		fd = next;
		if (!end)
			break;
		*end = '/';
		part = end + 1;
	}
	return fd;
}

/* Remove NAME from the directory DIR, and all below it when it is a
 * directory. Iterative, so that a tree deeper than any path (a container
 * can make one) overflows neither the stack nor the table of open files:
 * it climbs back with "..", checked against the directory it came from. */
static int remove_at(int dir, const char *name)
{
	if (!unlinkat(dir, name, 0) || errno == ENOENT)
		return 0;
	if (errno != EISDIR && errno != EPERM)
		return -1;
	struct level {
		dev_t dev;
		ino_t ino;
		char *name;
	} *up = NULL;
	size_t depth = 0, cap = 0;
	int fd = openat(dir, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC), rc = 0;
	while (fd >= 0) {
		/* Everything but directories goes; the first directory is next. */
		char *sub = NULL;
		int list = openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		DIR *d = list >= 0 ? fdopendir(list) : NULL;
		if (!d) {
			if (list >= 0)
				close(list);
			rc = -1;
			break;
		}
		struct dirent *e;
		while ((e = readdir(d))) {
			if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
				continue;
			if (!unlinkat(fd, e->d_name, 0) || errno == ENOENT)
				continue;
			if (errno == EISDIR || errno == EPERM)
				sub = strdup(e->d_name);
			if (!sub)
				rc = -1;
			break;
		}
		closedir(d);
		if (rc)
			break;
		struct stat here;
		if (sub) {
			if (depth == cap) {
				cap = cap ? cap * 2 : 64;
				struct level *n = realloc(up, cap * sizeof(*up));
				if (!n) {
					free(sub);
					rc = -1;
					break;
				}
				up = n;
			}
			if (fstat(fd, &here)) {
				free(sub);
				rc = -1;
				break;
			}
			up[depth++] = (struct level){here.st_dev, here.st_ino, sub};
			int child = openat(fd, sub, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			close(fd);
			fd = child;
			continue;
		}
		if (!depth)
			break;
		int parent = openat(fd, "..", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		close(fd);
		fd = parent;
		depth--;
		if (fd < 0 || fstat(fd, &here) || here.st_dev != up[depth].dev ||
		    here.st_ino != up[depth].ino || unlinkat(fd, up[depth].name, AT_REMOVEDIR)) {
			free(up[depth].name);
			rc = -1;
			break;
		}
		free(up[depth].name);
	}
	if (fd < 0)
		rc = -1;
	else
		close(fd);
	while (depth)
		free(up[--depth].name);
	free(up);
	return rc ? -1 : unlinkat(dir, name, AT_REMOVEDIR);
}

/* PUT /archive: unpack a tar under DEST. Owners are kept only when asked
 * (docker cp -a); otherwise files belong to root, as dockerd does it. */
struct extract_options {
	int keep_owners;          /* owners from the tar, else uid/gid below */
	uid_t uid;
	gid_t gid;
	int no_overwrite_dir_nondir;
	const char *rename_single; /* the archive's one file gets this name */
};

/* Whether a symlink at NAME (below the extraction point) to TARGET would
 * point above the extraction point, lexically: dockerd refuses such an
 * entry ("invalid symlink"), so does this. An absolute target is joined to
 * the link's directory as dockerd joins it, and stays below. */
static int symlink_breaks_out(const char *name, const char *target)
{
	if (target[0] == '/')
		return 0;
	long depth = 0;
	for (const char *p = name; *p; p++)
		depth += *p == '/';
	for (const char *p = target; *p;) {
		size_t n = strcspn(p, "/");
		if (n == 2 && p[0] == '.' && p[1] == '.') {
			if (--depth < 0)
				return 1;
		} else if (n && !(n == 1 && p[0] == '.')) {
			depth++;
		}
		p += n;
		while (*p == '/')
			p++;
	}
	return 0;
}

/* One PAX extended header's records ("LEN KEY=VALUE\n"): the ones read.
 * Returns non-zero when a name did not fit in CAP. */
static int pax_records(char *data, size_t size, char *path, char *link, size_t cap,
		       unsigned long long *pax_size, int *have_size)
{
	int too_long = 0;
	size_t at = 0;
	while (at < size) {
		char *p = data + at;
		size_t left = size - at, len = 0, i = 0;
		while (i < left && i < 10 && p[i] >= '0' && p[i] <= '9')
			len = len * 10 + (size_t)(p[i++] - '0');
		if (!i || i >= left || p[i] != ' ' || len <= i + 1 || len > left || p[len - 1] != '\n')
			return too_long; /* malformed: what follows cannot be trusted */
		char *key = p + i + 1, *end = p + len - 1;
		char *eq = memchr(key, '=', (size_t)(end - key));
		at += len;
		if (!eq)
			continue;
		*eq = 0;
		*end = 0;
		const char *value = eq + 1;
		if (strlen(value) != (size_t)(end - value))
			continue; /* a NUL inside: no name of ours */
		if (!strcmp(key, "path"))
			too_long |= PATHF_N(path, cap, "%s", value);
		else if (!strcmp(key, "linkpath"))
			too_long |= PATHF_N(link, cap, "%s", value);
		else if (!strcmp(key, "size")) {
			char *stop;
			errno = 0;
			*pax_size = strtoull(value, &stop, 10);
			*have_size = !errno && stop != value && !*stop;
		}
	}
	return too_long;
}

/* Unpack the tar read from IN into DEST, a path resolved inside the
 * directory ROOT as if ROOT were "/" (open_in_root): docker cp resolves in
 * the container's root, as dockerd's chrooted unpack does, and COPY/ADD in
 * their destination, as the builder's. */
static int tar_extract(int in, int root, const char *dest, const struct extract_options *o)
{
	struct stat dst;
	int dest_fd = open_in_root(root, dest, O_PATH | O_DIRECTORY);
	if (dest_fd < 0 || fstat(dest_fd, &dst) || !S_ISDIR(dst.st_mode)) {
		if (dest_fd >= 0)
			close(dest_fd);
		fprintf(stderr, "extraction point is not a directory\n");
		return 2;
	}
	close(dest_fd);
	unsigned char h[BLOCK];
	char pax_path[PATH_MAX] = "", pax_link[PATH_MAX] = "";
	unsigned long long pax_size = 0;
	int have_pax_size = 0;
	for (;;) {
		if (read_full(in, h, BLOCK))
			break; /* a missing end-of-archive is tolerated, as tar does */
		int empty = 1;
		for (int i = 0; i < BLOCK && empty; i++)
			empty = !h[i];
		if (empty)
			break;
		char type = (char)h[156];
		unsigned long long size = parse_octal((char *)h + 124, 12);
		if (type == 'x' || type == 'g' || type == 'L' || type == 'K') {
			if (size > 1024 * 1024) {
				fprintf(stderr, "archive header too large\n");
				return 1;
			}
			char *data = malloc(size + 1);
			if (!data || read_full(in, data, size)) {
				free(data);
				fprintf(stderr, "truncated archive\n");
				return 1;
			}
			data[size] = 0;
			if (discard(in, padding(size))) {
				free(data);
				fprintf(stderr, "truncated archive\n");
				return 1;
			}
			int too_long = 0;
			if (type == 'L')
				too_long = PATHF(pax_path, "%s", data);
			else if (type == 'K')
				too_long = PATHF(pax_link, "%s", data);
			else if (type == 'x')
				too_long = pax_records(data, size, pax_path, pax_link, sizeof(pax_path),
						       &pax_size, &have_pax_size);
			free(data);
			if (too_long) {
				/* Cut short, it would name another file. */
				fprintf(stderr, "archive entry name too long\n");
				return 1;
			}
			continue;
		}
		if (have_pax_size)
			size = pax_size;
		char raw[PATH_MAX], linkname[PATH_MAX], name[PATH_MAX];
		if (pax_path[0]) {
			snprintf(raw, sizeof(raw), "%s", pax_path);
		} else {
			char prefix[156] = "", base[101] = "";
			memcpy(base, h, 100);
			if (!memcmp(h + 257, "ustar", 5))
				memcpy(prefix, h + 345, 155);
			snprintf(raw, sizeof(raw), "%s%s%s", prefix, prefix[0] ? "/" : "", base);
		}
		if (pax_link[0]) {
			snprintf(linkname, sizeof(linkname), "%s", pax_link);
		} else {
			char l[101] = "";
			memcpy(l, h + 157, 100);
			snprintf(linkname, sizeof(linkname), "%s", l);
		}
		pax_path[0] = pax_link[0] = 0;
		have_pax_size = 0;
		mode_t mode = (mode_t)parse_octal((char *)h + 100, 8) & 07777;
		uid_t uid = o->keep_owners ? (uid_t)parse_octal((char *)h + 108, 8) : o->uid;
		gid_t gid = o->keep_owners ? (gid_t)parse_octal((char *)h + 116, 8) : o->gid;
		time_t mtime = (time_t)parse_octal((char *)h + 136, 12);
		/* Only these carry data; the others' size is ignored, as Go's tar
		 * reader (dockerd's) ignores it. */
		int has_data = !(type == '1' || type == '2' || type == '3' || type == '4' ||
				 type == '5' || type == '6');
		int clean = clean_name(o->rename_single ? o->rename_single : raw, name, sizeof(name));
		if (clean < 0) {
			fprintf(stderr, "refusing archive entry %s\n", raw);
			return 1;
		}
		if (clean > 0) { /* the archive's root: nothing to create */
			if (has_data && discard(in, size + padding(size)))
				break;
			continue;
		}
		if (type == '2' && symlink_breaks_out(name, linkname)) {
			fprintf(stderr, "invalid symlink \"%s\" -> \"%s\"\n", name, linkname);
			return 1;
		}
		const char *leaf;
		int dir = open_parent(root, dest, name, 1, &leaf);
		if (dir < 0) {
			fprintf(stderr, "cannot create %s: %s\n", name, strerror(errno));
			return 1;
		}
		struct stat existing;
		int exists = !fstatat(dir, leaf, &existing, AT_SYMLINK_NOFOLLOW);
		if (exists && o->no_overwrite_dir_nondir &&
		    (S_ISDIR(existing.st_mode) != (type == '5'))) {
			fprintf(stderr, "cannot overwrite %s with a %s\n", name,
				type == '5' ? "directory" : "non-directory");
			close(dir);
			return 1;
		}
		int rc = 0, fd = -1;
		if (exists && !(type == '5' && S_ISDIR(existing.st_mode)))
			rc = remove_at(dir, leaf);
		/* Not a char: a typeflag of 0 (an old tar's regular file) or of a
		 * byte above 127 (negative) must land in `default`. */
		switch (rc ? 256 : (unsigned char)type) {
		case 256: /* what was there could not be removed */
			break;
		case '5':
			if (mkdirat(dir, leaf, mode) && errno != EEXIST)
				rc = -1;
			else if ((fd = openat(dir, leaf, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)) < 0)
				rc = -1;
			break;
		case '2':
			rc = symlinkat(linkname, dir, leaf);
			break;
		case '1': {
			/* The target is a name in the archive, below DEST. */
			char target_name[PATH_MAX];
			const char *target_leaf;
			if (clean_name(linkname, target_name, sizeof(target_name))) {
				fprintf(stderr, "refusing hard link to %s\n", linkname);
				close(dir);
				return 1;
			}
			int target_dir = open_parent(root, dest, target_name, 0, &target_leaf);
			rc = target_dir < 0 ? -1 : linkat(target_dir, target_leaf, dir, leaf, 0);
			if (target_dir >= 0)
				close(target_dir);
			break;
		}
		case '3':
		case '4':
			rc = mknodat(dir, leaf, (type == '3' ? S_IFCHR : S_IFBLK) | mode,
				     makedev(parse_octal((char *)h + 329, 8), parse_octal((char *)h + 337, 8)));
			break;
		case '6':
			rc = mkfifoat(dir, leaf, mode);
			break;
		default: { /* '0', '\0', '7' and the rest: a regular file */
			/* O_EXCL: whatever was there is gone, and nothing that came
			 * back since (a FIFO, a device, a symlink) is written to. */
			fd = openat(dir, leaf, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
			if (fd < 0) {
				rc = -1;
				break;
			}
			char chunk[65536];
			unsigned long long left = size;
			while (left && !rc) {
				size_t n = left < sizeof(chunk) ? (size_t)left : sizeof(chunk);
				if (read_full(in, chunk, n) || write_all(fd, chunk, n))
					rc = -1;
				left -= n;
			}
			if (!rc && discard(in, padding(size)))
				rc = -1;
		}
		}
		if (rc) {
			fprintf(stderr, "cannot create %s: %s\n", name, strerror(errno));
			if (fd >= 0)
				close(fd);
			close(dir);
			return 1;
		}
		/* Owner first: a chown clears the set-id bits the mode brings. */
		if (fd >= 0 ? fchown(fd, uid, gid) : fchownat(dir, leaf, uid, gid, AT_SYMLINK_NOFOLLOW))
			LOG("chown %s: %s", name, strerror(errno));
		if (fd >= 0)
			fchmod(fd, mode);
		else if (type != '2' && type != '1')
			fchmodat(dir, leaf, mode, 0);
		struct timespec times[2] = {{.tv_sec = mtime}, {.tv_sec = mtime}};
		if (fd >= 0)
			futimens(fd, times);
		else if (type != '1')
			utimensat(dir, leaf, times, AT_SYMLINK_NOFOLLOW);
		if (fd >= 0)
			close(fd);
		close(dir);
	}
	return 0;
}

/* Unpack stdin under DEST, resolving in DIR as in "/" (tar_extract). */
static int extract_in(const char *dir, const char *dest, const struct extract_options *o)
{
	int root = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (root < 0) {
		fprintf(stderr, "extraction point is not a directory\n");
		return 2;
	}
	int rc = tar_extract(0, root, dest, o);
	close(root);
	return rc;
}

/* mkdir -p that gives the directories it creates to uid:gid when asked. */
static int mkdir_owned(const char *path, int chown_new, uid_t uid, gid_t gid)
{
	char tmp[PATH_MAX];
	if (PATHF(tmp, "%s", path))
		return -1;
	size_t len = strlen(tmp);
	for (size_t i = 1; i <= len; i++) {
		if (tmp[i] != '/' && tmp[i] != 0)
			continue;
		char saved = tmp[i];
		tmp[i] = 0;
		if (!mkdir(tmp, 0755)) {
			if (chown_new && lchown(tmp, uid, gid))
				return -1;
		} else if (errno != EEXIST) {
			return -1;
		}
		tmp[i] = saved;
	}
	return 0;
}

/* A Dockerfile COPY/ADD, as dockerd's classic builder does it:
 * - `dir`: a directory's content goes under DEST; DEST is created if need
 *   be (its parents root's, DEST itself --chown's owner);
 * - `files`: files go under DEST, every directory created for them is
 *   --chown's owner's;
 * - `archive`: like dir, keeping the archive's owners (ADD of a local tar);
 * - `file`: one file, which lands in DEST when DEST is a directory already
 *   and becomes DEST otherwise (created parents --chown's owner's).
 * OWNER is --chown's user[:group], resolved against the image's own account
 * files; without it everything belongs to root. */
static int copy_in(const char *dest, const char *mode, const char *owner)
{
	struct extract_options o = {0};
	char err[512];
	if (*owner && resolve_owner(owner, &o.uid, &o.gid, err, sizeof(err))) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	int chown_new = *owner != 0;
	o.keep_owners = !strcmp(mode, "archive");
	struct stat st;
	int dest_exists = !stat(dest, &st);
	int dest_is_dir = dest_exists && S_ISDIR(st.st_mode);
	if (strcmp(mode, "file") || dest_is_dir) {
		int files = !strcmp(mode, "files") || !strcmp(mode, "file");
		if (mkdir_owned(dest, chown_new && files, o.uid, o.gid) ||
		    (!dest_exists && chown_new && !o.keep_owners && lchown(dest, o.uid, o.gid))) {
			fprintf(stderr, "cannot create %s: %s\n", dest, strerror(errno));
			return 1;
		}
		return extract_in(dest, "", &o); /* the builder unpacks chrooted in DEST */
	}
	char parent[PATH_MAX];
	snprintf(parent, sizeof(parent), "%s", dest);
	char *slash = strrchr(parent, '/');
	const char *base = slash ? slash + 1 : parent;
	char name[NAME_MAX + 1];
	if (PATHF(name, "%s", base)) {
		fprintf(stderr, "name too long: %s\n", base);
		return 1;
	}
	if (slash && slash != parent)
		*slash = 0;
	else
		snprintf(parent, sizeof(parent), "/");
	if (mkdir_owned(parent, chown_new, o.uid, o.gid)) {
		fprintf(stderr, "cannot create %s: %s\n", parent, strerror(errno));
		return 1;
	}
	o.rename_single = name;
	return extract_in(parent, "", &o);
}

/* HEAD /archive: what dockerd puts in X-Docker-Container-Path-Stat. */
static int stat_path(const char *path)
{
	struct stat st;
	if (lstat(path, &st)) {
		fprintf(stderr, "Could not find the file %s in container\n", path);
		return 2;
	}
	char target[PATH_MAX] = "";
	if (S_ISLNK(st.st_mode)) {
		ssize_t n = readlink(path, target, sizeof(target) - 1);
		target[n > 0 ? n : 0] = 0;
	}
	const char *base = strrchr(path, '/');
	base = base && base[1] ? base + 1 : path;
	struct buf b = {0};
	buf_str(&b, "{\"name\":");
	buf_json_string(&b, base);
	buf_printf(&b, ",\"size\":%lld,\"mode\":%u,\"mtime\":%lld,\"mtime_ns\":%ld,\"linkTarget\":",
		   (long long)st.st_size, st.st_mode, (long long)st.st_mtim.tv_sec,
		   st.st_mtim.tv_nsec);
	buf_json_string(&b, target);
	buf_str(&b, "}\n");
	write_all(1, b.data, b.len);
	buf_free(&b);
	return 0;
}

/* The child's entry point for a builtin; returns its exit status. */
int run_builtin(const struct container *c, const char *name, char **args)
{
	container_upper(c, layer_upper, sizeof(layer_upper));
	container_lower(c, layer_lower, sizeof(layer_lower));
	container_created_list(c, created_list, sizeof(created_list));
	snprintf(container_cgroup, sizeof(container_cgroup), "%s", c->cgroup);
	if (!strcmp(name, "tar-create") && args[0])
		return tar_create(1, args[0]);
	if (!strcmp(name, "tar-extract") && args[0]) {
		struct extract_options o = {
			.keep_owners = args[1] && !strcmp(args[1], "keep-owners"),
			.no_overwrite_dir_nondir = args[1] && args[2] &&
						   !strcmp(args[2], "no-overwrite-dir-nondir"),
		};
		/* Resolved in the container's root, as dockerd's chrooted unpack. */
		return extract_in("/", args[0], &o);
	}
	if (!strcmp(name, "copy-in") && args[0] && args[1])
		return copy_in(args[0], args[1], args[2] ? args[2] : "");
	if (!strcmp(name, "stat") && args[0])
		return stat_path(args[0]);
	if (!strcmp(name, "changes")) {
		load_created();
		struct buf out = {0};
		list_changes(layer_upper, "", &out);
		int rc = out.len ? write_all(1, out.data, out.len) : 0;
		buf_free(&out);
		return rc ? 1 : 0;
	}
	if (!strcmp(name, "tar-changes"))
		return tar_changes(args[0] && !strcmp(args[0], "freeze"));
	if (!strcmp(name, "tar-export"))
		return tar_export();
	fprintf(stderr, "unknown builtin %s\n", name);
	return 127;
}

/* CREATE makes these when the image lacks them; diff and commit skip them.
 * `rel` is the path inside the container, with its leading slash. */
void record_created(const struct container *c, const char *rel)
{
	char list[160];
	container_created_list(c, list, sizeof(list));
	int fd = open(list, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	if (fd < 0)
		return;
	write_all(fd, rel, strlen(rel));
	write_all(fd, "\n", 1);
	close(fd);
}
