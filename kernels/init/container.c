/* CREATE and DESTROY: a container's root filesystem and everything mounted
 * under it, the files hbd owns, and its cgroup.
 *
 * Everything is mounted in the init's own mount namespace under the
 * container's directory; its main process's new mount namespace starts as a
 * copy. Disks are mounted once each, by serial, under DISKS and counted:
 * the image disk of two containers of one image is mounted once. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "init.h"
#include "util.h"

/* openat2 (Linux >= 5.6): musl has neither the wrapper nor the ABI. */
struct open_how_ {
	unsigned long long flags, mode, resolve;
};
#define RESOLVE_NO_MAGICLINKS_ 0x02
#define RESOLVE_BENEATH_ 0x08

/* How long CREATE waits for a disk the host has just hot-added. */
#define DISK_WAIT_MS 10000
#define BOOT_ROOTFS ROOT "/boot-rootfs"

static struct container *containers;

int valid_id(const char *id)
{
	size_t n = strlen(id);
	if (n == 0 || n > ID_MAX || !strcmp(id, ".") || !strcmp(id, ".."))
		return 0;
	for (const char *p = id; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		      (*p >= '0' && *p <= '9') || *p == '_' || *p == '.' || *p == '-'))
			return 0;
	return 1;
}

struct container *container_find(const char *id)
{
	for (struct container *c = containers; c; c = c->next)
		if (!strcmp(c->id, id))
			return c;
	return NULL;
}

static int do_mount(const char *src, const char *target, const char *fstype,
		    unsigned long flags, const char *data, struct err *e)
{
	if (mount(src, target, fstype, flags, data)) {
		set_err(e, "system", errno, "mount %s on %s (%s): %s", src ? src : "none", target,
			fstype ? fstype : "bind", strerror(errno));
		return -1;
	}
	return 0;
}

/* -- disks, by serial ------------------------------------------------------ */

struct disk {
	char serial[ID_MAX + 1];
	int refs;
	struct disk *next;
};

static struct disk *disks;

static void disk_path(const char *serial, char *out, size_t cap)
{
	snprintf(out, cap, DISKS "/%s", serial);
}

static struct disk *disk_find(const char *serial)
{
	for (struct disk *d = disks; d; d = d->next)
		if (!strcmp(d->serial, serial))
			return d;
	return NULL;
}

/* The mount flags a disk mount may ask for (`fs_flags`): a filesystem's
 * own options, never binds, moves or propagation. */
#define DISK_FLAGS (MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_SYNCHRONOUS | \
		    MS_DIRSYNC | MS_NOATIME | MS_NODIRATIME | MS_RELATIME | MS_STRICTATIME | \
		    MS_LAZYTIME)

/* Mount the disk (if nobody has yet) and take a reference to it: ext4 unless
 * `fstype` names another filesystem, with `data` as its options. */
static int disk_acquire_fs(const char *serial, unsigned long flags, const char *fstype,
			   const char *data, struct err *e);

static int disk_acquire(const char *serial, unsigned long flags, struct err *e)
{
	return disk_acquire_fs(serial, flags, "ext4", "", e);
}

static int disk_acquire_fs(const char *serial, unsigned long flags, const char *fstype,
			   const char *data, struct err *e)
{
	struct disk *d = disk_find(serial);
	if (d) {
		d->refs++;
		return 0;
	}
	if (!valid_id(serial)) {
		set_err(e, "invalid", EINVAL, "bad disk serial");
		return -1;
	}
	char dev[64], path[128];
	if (find_disk(serial, dev, sizeof(dev), DISK_WAIT_MS)) {
		set_err(e, "system", ENODEV, "no disk with serial %s", serial);
		return -1;
	}
	disk_path(serial, path, sizeof(path));
	if (mkdir_p(path, 0755)) {
		set_err(e, "system", errno, "mkdir %s: %s", path, strerror(errno));
		return -1;
	}
	if (do_mount(dev, path, fstype, flags, data, e))
		return -1;
	d = calloc(1, sizeof(*d));
	if (!d) {
		umount2(path, 0);
		set_err(e, "system", ENOMEM, "out of memory");
		return -1;
	}
	snprintf(d->serial, sizeof(d->serial), "%s", serial);
	d->refs = 1;
	d->next = disks;
	disks = d;
	return 0;
}

/* Drop a reference; the last one unmounts (and so syncs) the filesystem. */
static void disk_release(const char *serial)
{
	for (struct disk **pp = &disks; *pp; pp = &(*pp)->next) {
		struct disk *d = *pp;
		if (strcmp(d->serial, serial))
			continue;
		if (--d->refs > 0)
			return;
		char path[128];
		disk_path(serial, path, sizeof(path));
		if (umount2(path, 0)) {
			LOG("unmount %s: %s; detaching it", path, strerror(errno));
			umount2(path, MNT_DETACH);
		}
		rmdir(path);
		*pp = d->next;
		free(d);
		return;
	}
}

void container_upper(const struct container *c, char *out, size_t cap)
{
	snprintf(out, cap, DISKS "/%s/upper", c->scratch);
}

void container_lower(const struct container *c, char *out, size_t cap)
{
	snprintf(out, cap, DISKS "/%s", c->image);
}

void container_created_list(const struct container *c, char *out, size_t cap)
{
	snprintf(out, cap, DISKS "/%s/hbd-created", c->scratch);
}

/* -- the root filesystem -------------------------------------------------------- */

static int mount_overlay(const char *image, const char *scratch, const char *target,
			 struct err *e)
{
	char upper[160], work[160], opts[600];
	snprintf(upper, sizeof(upper), DISKS "/%s/upper", scratch);
	snprintf(work, sizeof(work), DISKS "/%s/work", scratch);
	if (mkdir_p(upper, 0755) || mkdir_p(work, 0755) || mkdir_p(target, 0755)) {
		set_err(e, "system", errno, "scratch layout: %s", strerror(errno));
		return -1;
	}
	snprintf(opts, sizeof(opts), "lowerdir=" DISKS "/%s,upperdir=%s,workdir=%s,xino=off",
		 image, upper, work);
	return do_mount("overlay", target, "overlay", 0, opts, e);
}

/* Done at boot for the disks with the conventional serials `image` and
 * `scratch`, while the host's first requests are still on their way: the
 * first CREATE naming them takes this root as it is. */
static int boot_rootfs_ready;

void containers_prepare_boot(void)
{
	struct err e = {0};
	scsi_scan_lun(1);
	scsi_scan_lun(2);
	TRACE("boot disks scanned");
	if (disk_acquire("image", MS_RDONLY, &e))
		return;
	TRACE("image disk mounted");
	if (disk_acquire("scratch", MS_NOATIME, &e)) {
		disk_release("image");
		return;
	}
	TRACE("scratch disk mounted");
	if (mount_overlay("image", "scratch", BOOT_ROOTFS, &e)) {
		disk_release("scratch");
		disk_release("image");
		return;
	}
	boot_rootfs_ready = 1;
	TRACE("overlay mounted");
}

static int setup_rootfs(struct container *c, struct err *e)
{
	if (boot_rootfs_ready && !strcmp(c->image, "image") && !strcmp(c->scratch, "scratch")) {
		boot_rootfs_ready = 0;
		if (mkdir_p(c->rootfs, 0755) ||
		    do_mount(BOOT_ROOTFS, c->rootfs, NULL, MS_MOVE, NULL, e))
			return -1;
		return 0;
	}
	if (disk_acquire(c->image, MS_RDONLY, e))
		return -1;
	if (disk_acquire(c->scratch, MS_NOATIME, e)) {
		disk_release(c->image);
		return -1;
	}
	if (mount_overlay(c->image, c->scratch, c->rootfs, e)) {
		disk_release(c->scratch);
		disk_release(c->image);
		return -1;
	}
	return 0;
}

/* A path inside the container root, with every component resolved inside
 * it: a symlink in the image must not send a mount outside the rootfs. */
static int rootfs_path(const struct container *c, const char *target, char *out, size_t cap,
		       struct err *e)
{
	char resolved[4096] = "";
	char work[4096];
	int hops = 0;
	snprintf(work, sizeof(work), "%s", target);
	char *rest = work;
	while (*rest) {
		while (*rest == '/')
			rest++;
		if (!*rest)
			break;
		char *slash = strchr(rest, '/');
		size_t n = slash ? (size_t)(slash - rest) : strlen(rest);
		char comp[256];
		if (n >= sizeof(comp)) {
			set_err(e, "invalid", ENAMETOOLONG, "path too long: %s", target);
			return -1;
		}
		memcpy(comp, rest, n);
		comp[n] = 0;
		rest += n;
		if (!strcmp(comp, "."))
			continue;
		if (!strcmp(comp, "..")) {
			char *last = strrchr(resolved, '/');
			if (last)
				*last = 0;
			continue;
		}
		char candidate[4096], full[4400], link[4096];
		if (snprintf(candidate, sizeof(candidate), "%s/%s", resolved, comp) >=
		    (int)sizeof(candidate))
			goto too_long;
		snprintf(full, sizeof(full), "%s%s", c->rootfs, candidate);
		ssize_t len = readlink(full, link, sizeof(link) - 1);
		if (len < 0) {
			snprintf(resolved, sizeof(resolved), "%s", candidate);
			continue;
		}
		if (++hops > 40) {
			set_err(e, "invalid", ELOOP, "too many symlinks in %s", target);
			return -1;
		}
		link[len] = 0;
		char next[4096];
		if (snprintf(next, sizeof(next), "%s/%s", link, rest) >= (int)sizeof(next))
			goto too_long;
		if (link[0] == '/')
			resolved[0] = 0;
		snprintf(work, sizeof(work), "%s", next);
		rest = work;
	}
	if (snprintf(out, cap, "%s%s", c->rootfs, resolved) < (int)cap)
		return 0;
too_long:
	set_err(e, "invalid", ENAMETOOLONG, "path too long: %s", target);
	return -1;
}

static int ensure_target(const struct container *c, const char *path, int is_file,
			 struct err *e)
{
	char parent[4096];
	snprintf(parent, sizeof(parent), "%s", path);
	char *slash = strrchr(parent, '/');
	if (slash && slash != parent) {
		*slash = 0;
		if (mkdir_p(parent, 0755)) {
			set_err(e, "system", errno, "mkdir %s: %s", parent, strerror(errno));
			return -1;
		}
	}
	struct stat st;
	if (!lstat(path, &st))
		return 0;
	int rc = is_file ? (close(open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644)), 0)
			 : mkdir(path, 0755);
	if (rc && errno != EEXIST) {
		set_err(e, "system", errno, "create %s: %s", path, strerror(errno));
		return -1;
	}
	size_t root_len = strlen(c->rootfs);
	if (!rc && !strncmp(path, c->rootfs, root_len) && path[root_len] == '/')
		record_created(c, path + root_len);
	return 0;
}

static int setup_dev(struct container *c, long long shm_size, struct err *e)
{
	char dev[200], path[256];
	snprintf(dev, sizeof(dev), "%s/dev", c->rootfs);
	if (ensure_target(c, dev, 0, e) ||
	    do_mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_STRICTATIME, "mode=755,size=65536k", e))
		return -1;
	static const struct {
		const char *name;
		unsigned maj, min;
	} nodes[] = {{"null", 1, 3}, {"zero", 1, 5}, {"full", 1, 7},
		     {"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0}};
	for (size_t i = 0; i < sizeof(nodes) / sizeof(nodes[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", dev, nodes[i].name);
		if (mknod(path, S_IFCHR | 0666, makedev(nodes[i].maj, nodes[i].min)) ||
		    chmod(path, 0666)) {
			set_err(e, "system", errno, "mknod %s: %s", path, strerror(errno));
			return -1;
		}
	}
	static const char *links[][2] = {{"/proc/self/fd", "fd"}, {"/proc/self/fd/0", "stdin"},
					 {"/proc/self/fd/1", "stdout"}, {"/proc/self/fd/2", "stderr"},
					 {"pts/ptmx", "ptmx"}, {"/proc/kcore", "core"}};
	for (size_t i = 0; i < sizeof(links) / sizeof(links[0]); i++) {
		/* runc links /dev/core only to a /proc/kcore that exists. */
		if (!strcmp(links[i][1], "core") && access("/proc/kcore", F_OK))
			continue;
		snprintf(path, sizeof(path), "%s/%s", dev, links[i][1]);
		if (symlink(links[i][0], path)) {
			set_err(e, "system", errno, "symlink %s: %s", path, strerror(errno));
			return -1;
		}
	}
	char pts[220], shm[220], mqueue[220];
	snprintf(pts, sizeof(pts), "%s/pts", dev);
	snprintf(shm, sizeof(shm), "%s/shm", dev);
	snprintf(mqueue, sizeof(mqueue), "%s/mqueue", dev);
	if (mkdir(pts, 0755) || mkdir(shm, 01777) || mkdir(mqueue, 0755)) {
		set_err(e, "system", errno, "mkdir in /dev: %s", strerror(errno));
		return -1;
	}
	if (do_mount("devpts", pts, "devpts", MS_NOSUID | MS_NOEXEC,
		     "newinstance,ptmxmode=0666,mode=0620,gid=5", e))
		return -1;
	struct container *peer = *c->ipc_peer ? container_find(c->ipc_peer) : NULL;
	if (*c->ipc_peer) {
		/* --ipc container:X: X's /dev/shm, as dockerd bind-mounts it. */
		char peer_shm[220];
		if (!peer) {
			set_err(e, "state", ENOENT, "container %s is not in this sandbox", c->ipc_peer);
			return -1;
		}
		snprintf(peer_shm, sizeof(peer_shm), "%s/dev/shm", peer->rootfs);
		return do_mount(peer_shm, shm, NULL, MS_BIND, NULL, e);
	}
	char shm_opts[64];
	snprintf(shm_opts, sizeof(shm_opts), "mode=1777,size=%lld", shm_size);
	return do_mount("shm", shm, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, shm_opts, e);
}

static int stage_file(struct container *c, const struct json *f, struct owned_file *out,
		      struct err *e)
{
	const char *target = json_str(f, "path", NULL);
	size_t len;
	unsigned char *bytes = base64_decode(json_str(f, "data", ""), &len);
	if (!target || target[0] != '/' || strlen(target) >= sizeof(out->target) || !bytes) {
		free(bytes);
		set_err(e, "invalid", EINVAL, "file without an absolute path or with bad base64");
		return -1;
	}
	snprintf(out->target, sizeof(out->target), "%s", target);
	snprintf(out->staged, sizeof(out->staged), "%s/files/%d", c->dir, c->nfiles);
	int rc = write_file(out->staged, bytes, len, (mode_t)json_int(f, "mode", 0644));
	free(bytes);
	if (rc)
		set_err(e, "system", errno, "write %s: %s", out->staged, strerror(errno));
	return rc;
}

static int setup_files(struct container *c, const struct json *files, struct err *e)
{
	char dir[160];
	snprintf(dir, sizeof(dir), "%s/files", c->dir);
	if (mkdir_p(dir, 0700)) {
		set_err(e, "system", errno, "mkdir %s: %s", dir, strerror(errno));
		return -1;
	}
	for (const struct json *f = files ? files->child : NULL; f; f = f->next) {
		if (c->nfiles == MAX_FILES) {
			set_err(e, "invalid", E2BIG, "too many files");
			return -1;
		}
		struct owned_file *of = &c->files[c->nfiles];
		char inside[4096];
		if (stage_file(c, f, of, e) || rootfs_path(c, of->target, inside, sizeof(inside), e) ||
		    ensure_target(c, inside, 1, e))
			return -1;
		c->nfiles++;
		struct stat st;
		if (lstat(inside, &st))
			continue; /* under a read-only mount that lacks it: as runc, go without */
		if (do_mount(of->staged, inside, NULL, MS_BIND, NULL, e))
			return -1;
	}
	return 0;
}

int container_files(struct container *c, const struct json *files, struct err *e)
{
	for (const struct json *f = files ? files->child : NULL; f; f = f->next) {
		const char *target = json_str(f, "path", "");
		struct owned_file *of = NULL;
		for (int i = 0; i < c->nfiles; i++)
			if (!strcmp(c->files[i].target, target))
				of = &c->files[i];
		if (!of) {
			set_err(e, "notfound", ENOENT, "hbd owns no file %s in container %s", target,
				c->id);
			return -1;
		}
		size_t len;
		unsigned char *bytes = base64_decode(json_str(f, "data", ""), &len);
		if (!bytes) {
			set_err(e, "invalid", EINVAL, "file %s: bad base64", target);
			return -1;
		}
		/* In place (the same inode): it is bind-mounted over its target. */
		int fd = open(of->staged, O_WRONLY | O_TRUNC | O_CLOEXEC);
		int rc = fd < 0 ? -1 : write_all(fd, bytes, len);
		if (fd >= 0)
			close(fd);
		free(bytes);
		if (rc) {
			set_err(e, "system", errno, "rewrite %s: %s", target, strerror(errno));
			return -1;
		}
	}
	return 0;
}

/* A mount's source directory (or file) outside the container: a disk by
 * serial, or an entry of the shared filesystem. */
static int mount_source(struct container *c, const struct json *m, const char *type,
			const char *source, char *out, size_t cap, struct err *e)
{
	if (!valid_id(source)) {
		set_err(e, "invalid", EINVAL, "bad mount source");
		return -1;
	}
	if (!strcmp(type, "disk")) {
		if (c->ndisks == (int)(sizeof(c->disks) / sizeof(c->disks[0]))) {
			set_err(e, "invalid", E2BIG, "too many disks");
			return -1;
		}
		/* Mounted read-write even for a read-only mount: the bind is what
		 * is read-only, and an empty volume takes the image's content first.
		 * A direct-assigned volume names its filesystem and options. */
		const char *fstype = json_str(m, "fstype", "");
		unsigned long flags = (unsigned long)json_int(m, "fs_flags", 0) & DISK_FLAGS;
		if (disk_acquire_fs(source, flags, *fstype ? fstype : "ext4",
				    json_str(m, "fs_options", ""), e))
			return -1;
		snprintf(c->disks[c->ndisks++], ID_MAX + 1, "%s", source);
		disk_path(source, out, cap);
		return 0;
	}
	if (!sandbox_ready()) {
		set_err(e, "state", EAGAIN, "SANDBOX has not run");
		return -1;
	}
	snprintf(out, cap, SHARED "/%s", source);
	struct stat st;
	if (stat(out, &st)) {
		set_err(e, "system", errno, "shared %s: %s", source, strerror(errno));
		return -1;
	}
	return 0;
}

static int bind_source(struct container *c, const struct json *m, const char *source,
		       const char *inside, int ro, struct err *e)
{
	struct stat st;
	int is_file = !stat(source, &st) && !S_ISDIR(st.st_mode);
	if (is_file) {
		rmdir(inside); /* ensure_target made a directory: a file goes here */
		if (ensure_target(c, inside, 1, e))
			return -1;
	} else if (json_bool(m, "copy_up", 0) && copy_up(inside, source, e)) {
		/* An empty volume takes what the image has at its target first. */
		return -1;
	}
	if (do_mount(source, inside, NULL, MS_BIND, NULL, e))
		return -1;
	if (ro && do_mount(NULL, inside, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL, e))
		return -1;
	return 0;
}

/* --mount volume-subpath: SUBPATH resolved beneath BASE, never leaving it
 * (RESOLVE_BENEATH, as dockerd's safepath). On success `out` names the
 * opened path (/proc/self/fd/N) and *fd must be closed after mounting. */
static int open_subpath(const char *base, const char *subpath, const char *target, int *fd,
			char *out, size_t cap, struct err *e)
{
	int dir = open(base, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (dir < 0) {
		set_err(e, "system", errno, "open %s: %s", base, strerror(errno));
		return -1;
	}
	struct open_how_ how = {.flags = O_PATH | O_CLOEXEC,
				.resolve = RESOLVE_BENEATH_ | RESOLVE_NO_MAGICLINKS_};
	*fd = (int)syscall(SYS_openat2, dir, subpath, &how, sizeof(how));
	int saved = errno;
	close(dir);
	if (*fd >= 0) {
		snprintf(out, cap, "/proc/self/fd/%d", *fd);
		return 0;
	}
	if (saved == EXDEV)
		set_err(e, "invalid", saved,
			"path concatenation escapes the base directory, subpath: %s", subpath);
	else if (saved == ENOENT || saved == ELOOP || saved == ENOTDIR)
		set_err(e, "notfound", saved, "cannot access path %s of the mount at %s: %s",
			subpath, target, errno_text(saved));
	else
		set_err(e, "system", saved, "openat2 %s: %s", subpath, strerror(saved));
	return -1;
}

/* ReadOnlyNonRecursive: the host's own writable mounts under a read-only
 * bind's source stay writable. The guest sees that source as one
 * filesystem, read-only as a whole once bound so: each such path is bound
 * again over itself, without MS_RDONLY, both ends resolved beneath the
 * mount (a symlink in the source cannot send the bind elsewhere). */
static int keep_writable(const struct json *m, const char *source, const char *inside,
			 struct err *e)
{
	const struct json *paths = json_get(m, "writable");
	const char *target = json_str(m, "target", "");
	for (const struct json *p = paths ? paths->child : NULL; p; p = p->next) {
		if (p->type != J_STR)
			continue;
		int from = -1, onto = -1;
		char from_path[64], onto_path[64];
		int rc = open_subpath(source, p->str, target, &from, from_path, sizeof(from_path), e) ||
			 open_subpath(inside, p->str, target, &onto, onto_path, sizeof(onto_path), e) ||
			 do_mount(from_path, onto_path, NULL, MS_BIND, NULL, e);
		if (from >= 0)
			close(from);
		if (onto >= 0)
			close(onto);
		if (rc)
			return -1;
	}
	return 0;
}

static int bind_mount(struct container *c, const struct json *m, const char *inside,
		      struct err *e)
{
	const char *type = json_str(m, "type", "");
	const char *subpath = json_str(m, "subpath", "");
	int ro = json_bool(m, "readonly", 0);
	char base[160], source[160];
	if (mount_source(c, m, type, json_str(m, "source", ""), base, sizeof(base), e))
		return -1;
	int fd = -1;
	if (!*subpath)
		snprintf(source, sizeof(source), "%s", base);
	else if (open_subpath(base, subpath, json_str(m, "target", ""), &fd, source,
			      sizeof(source), e))
		return -1;
	int rc = bind_source(c, m, source, inside, ro, e);
	if (!rc && ro)
		rc = keep_writable(m, source, inside, e);
	if (fd >= 0)
		close(fd);
	return rc;
}

/* A raw block device (Kubernetes' volumeMode: Block): the node of the disk
 * `source` made at `inside`, with the mode asked (the guest's node: the disk
 * itself is never mounted). */
static int make_device_node(const struct json *m, const char *inside, struct err *e)
{
	const char *serial = json_str(m, "source", "");
	char dev[64];
	struct stat st;
	if (!valid_id(serial)) {
		set_err(e, "invalid", EINVAL, "bad disk serial");
		return -1;
	}
	if (find_disk(serial, dev, sizeof(dev), DISK_WAIT_MS) || stat(dev, &st) ||
	    !S_ISBLK(st.st_mode)) {
		set_err(e, "system", ENODEV, "no disk with serial %s", serial);
		return -1;
	}
	mode_t mode = (mode_t)json_int(m, "mode", 0660) & 0777;
	unlink(inside); /* ensure_target made an empty file: the node goes here */
	if (mknod(inside, S_IFBLK | mode, st.st_rdev) || chmod(inside, mode)) {
		set_err(e, "system", errno, "mknod %s: %s", inside, strerror(errno));
		return -1;
	}
	return 0;
}

static int setup_mounts(struct container *c, const struct json *mounts, struct err *e)
{
	for (const struct json *m = mounts ? mounts->child : NULL; m; m = m->next) {
		const char *type = json_str(m, "type", "");
		const char *target = json_str(m, "target", "");
		char inside[4096];
		if (target[0] != '/') {
			set_err(e, "invalid", EINVAL, "mount target must be absolute: %s", target);
			return -1;
		}
		int device = !strcmp(type, "device");
		if (rootfs_path(c, target, inside, sizeof(inside), e) ||
		    ensure_target(c, inside, device, e))
			return -1;
		if (device) {
			if (make_device_node(m, inside, e))
				return -1;
		} else if (!strcmp(type, "disk") || !strcmp(type, "share")) {
			if (bind_mount(c, m, inside, e))
				return -1;
		} else if (!strcmp(type, "tmpfs")) {
			const char *options = json_str(m, "options", "");
			unsigned long ro = json_bool(m, "readonly", 0) ? MS_RDONLY : 0;
			if (do_mount("tmpfs", inside, "tmpfs", ro | MS_NOSUID | MS_NODEV,
				     *options ? options : "mode=1777", e))
				return -1;
		} else {
			set_err(e, "invalid", EINVAL, "unknown mount type %s", type);
			return -1;
		}
	}
	return 0;
}

/* --init: the init's own binary at /sbin/docker-init, read-only, where
 * dockerd binds its docker-init. */
static int bind_docker_init(struct container *c, struct err *e)
{
	char inside[4096];
	if (rootfs_path(c, DOCKER_INIT_PATH, inside, sizeof(inside), e) ||
	    ensure_target(c, inside, 1, e) ||
	    do_mount("/proc/self/exe", inside, NULL, MS_BIND, NULL, e))
		return -1;
	return do_mount(NULL, inside, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL, e);
}

long long cgroup_oom_kills(const struct container *c)
{
	return cgroup_file(c, "memory.events", "oom_kill ");
}

static int setup_cgroup(struct container *c, const struct json *spec, struct err *e)
{
	static int controllers_enabled;
	static const char controllers[] = "+memory +cpu +pids";
	if (!controllers_enabled &&
	    write_file("/sys/fs/cgroup/cgroup.subtree_control", controllers,
		       sizeof(controllers) - 1, 0644))
		LOG("cannot enable cgroup controllers: %s", strerror(errno));
	controllers_enabled = 1;
	if (mkdir(c->cgroup, 0755) && errno != EEXIST) {
		set_err(e, "system", errno, "mkdir %s: %s", c->cgroup, strerror(errno));
		return -1;
	}
	return cgroup_update(c, spec, e);
}

static void free_spec(struct container *c)
{
	buf_free(&c->sysctls);
	buf_free(&c->group_add);
	security_free(&c->security);
}

static int copy_sysctls(struct container *c, const struct json *sysctls, struct err *e)
{
	for (const struct json *kv = sysctls ? sysctls->child : NULL; kv; kv = kv->next) {
		if (kv->type != J_STR || !kv->key || !*kv->key || strstr(kv->key, "..") ||
		    strchr(kv->key, '/')) {
			set_err(e, "invalid", EINVAL, "bad sysctl");
			return -1;
		}
		buf_add(&c->sysctls, kv->key, strlen(kv->key) + 1);
		buf_add(&c->sysctls, kv->str, strlen(kv->str) + 1);
	}
	return 0;
}

static int copy_rlimits(struct container *c, const struct json *rlimits, struct err *e)
{
	for (const struct json *r = rlimits ? rlimits->child : NULL; r; r = r->next) {
		const char *type = json_str(r, "type", "");
		int resource = rlimit_resource(type);
		if (resource < 0) {
			set_err(e, "invalid", EINVAL, "wrong rlimit value: RLIMIT_%s", type);
			return -1;
		}
		if (c->nrlimits == MAX_RLIMITS) {
			set_err(e, "invalid", E2BIG, "too many rlimits");
			return -1;
		}
		/* -1 is RLIM_INFINITY, as Go's uint64 conversion makes it. */
		c->rlimits[c->nrlimits++] = (struct rlimit_spec){
			resource, (unsigned long long)json_int(r, "soft", 0),
			(unsigned long long)json_int(r, "hard", 0)};
	}
	return 0;
}

/* What every process of the container gets: groups, rlimits, OOM score. */
static int copy_process_settings(struct container *c, const struct json *spec, struct err *e)
{
	const struct json *groups = json_get(spec, "group_add");
	for (const struct json *g = groups ? groups->child : NULL; g; g = g->next) {
		if (g->type != J_STR) {
			set_err(e, "invalid", EINVAL, "group_add holds strings");
			return -1;
		}
		buf_add(&c->group_add, g->str, strlen(g->str) + 1);
	}
	c->groups_strict = json_bool(spec, "groups_strict", 0);
	long long adj = json_int(spec, "oom_score_adj", 0);
	if (adj < -1000 || adj > 1000) {
		set_err(e, "invalid", EINVAL, "oom_score_adj %lld is out of [-1000, 1000]", adj);
		return -1;
	}
	c->oom_score_adj = (int)adj;
	return copy_rlimits(c, json_get(spec, "rlimits"), e);
}

static int copy_spec(struct container *c, const struct json *spec, struct err *e)
{
	const char *id = json_str(spec, "container", "");
	const struct json *rootfs = json_get(spec, "rootfs");
	const char *image = json_str(rootfs, "image", "");
	const char *scratch = json_str(rootfs, "scratch", "");
	const char *pid_peer = json_str(spec, "pidns", "");
	const char *ipc_peer = json_str(spec, "ipcns", "");
	if (!valid_id(id) || !valid_id(image) || !valid_id(scratch) ||
	    (*pid_peer && !valid_id(pid_peer)) || (*ipc_peer && !valid_id(ipc_peer))) {
		set_err(e, "invalid", EINVAL, "CREATE needs valid container, rootfs and peer ids");
		return -1;
	}
	if (container_find(id)) {
		set_err(e, "state", EEXIST, "container %s exists", id);
		return -1;
	}
	snprintf(c->id, sizeof(c->id), "%s", id);
	snprintf(c->dir, sizeof(c->dir), ROOT "/c/%s", id);
	snprintf(c->rootfs, sizeof(c->rootfs), "%s/rootfs", c->dir);
	snprintf(c->cgroup, sizeof(c->cgroup), "/sys/fs/cgroup/c-%s", id);
	snprintf(c->image, sizeof(c->image), "%s", image);
	snprintf(c->scratch, sizeof(c->scratch), "%s", scratch);
	snprintf(c->hostname, sizeof(c->hostname), "%s", json_str(spec, "hostname", ""));
	snprintf(c->domainname, sizeof(c->domainname), "%s", json_str(spec, "domainname", ""));
	snprintf(c->pid_peer, sizeof(c->pid_peer), "%s", pid_peer);
	snprintf(c->ipc_peer, sizeof(c->ipc_peer), "%s", ipc_peer);
	if (copy_sysctls(c, json_get(spec, "sysctls"), e) || copy_process_settings(c, spec, e) ||
	    security_copy(&c->security, spec, e)) {
		free_spec(c);
		return -1;
	}
	c->net = netns_get(json_str(spec, "netns", ""), 1, e);
	if (!c->net)
		free_spec(c);
	return c->net ? 0 : -1;
}

/* Undo what setup did, in reverse: the tree, the disks, the cgroup. */
static void teardown(struct container *c)
{
	sync();
	umount2(c->rootfs, MNT_DETACH);
	for (int i = c->ndisks - 1; i >= 0; i--)
		disk_release(c->disks[i]);
	c->ndisks = 0;
	disk_release(c->scratch);
	disk_release(c->image);
	rmdir(c->cgroup);
	char files[160];
	snprintf(files, sizeof(files), "%s/files", c->dir);
	for (int i = 0; i < c->nfiles; i++)
		unlink(c->files[i].staged);
	rmdir(files);
	rmdir(c->rootfs);
	rmdir(c->dir);
	free_spec(c);
}

int container_create(const struct json *spec, struct err *e)
{
	struct container *c = calloc(1, sizeof(*c));
	if (!c) {
		set_err(e, "system", ENOMEM, "out of memory");
		return -1;
	}
	if (copy_spec(c, spec, e)) {
		free(c);
		return -1;
	}
	if (mkdir_p(c->dir, 0700)) {
		set_err(e, "system", errno, "mkdir %s: %s", c->dir, strerror(errno));
		free_spec(c);
		free(c);
		return -1;
	}
	const struct json *rootfs = json_get(spec, "rootfs");
	long long shm = json_int(spec, "shm_size", 64LL * 1024 * 1024);
	/* Mounts first: hbd's files (hosts, resolv.conf) then land on top of a
	 * volume or bind at /etc, as runc orders them. */
	if (setup_rootfs(c, e)) {
		rmdir(c->dir);
		free_spec(c);
		free(c);
		return -1;
	}
	if (setup_dev(c, shm > 0 ? shm : 64LL * 1024 * 1024, e) ||
	    setup_mounts(c, json_get(spec, "mounts"), e) ||
	    (json_bool(spec, "init", 0) && bind_docker_init(c, e)) ||
	    setup_files(c, json_get(spec, "files"), e) || setup_cgroup(c, spec, e) ||
	    (json_bool(rootfs, "readonly", 0) &&
	     do_mount(NULL, c->rootfs, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL, e))) {
		teardown(c);
		free(c);
		return -1;
	}
	c->next = containers;
	containers = c;
	TRACE("container %s created", c->id);
	return 0;
}

static int cgroup_empty(const struct container *c)
{
	return cgroup_file(c, "cgroup.events", "populated ") == 0;
}

static void cgroup_kill(const struct container *c)
{
	char path[160];
	snprintf(path, sizeof(path), "%s/cgroup.kill", c->cgroup);
	if (write_file(path, "1", 1, 0644))
		LOG("kill %s: %s", path, strerror(errno));
}

void container_main_exited(struct container *c)
{
	c->main_exited = 1;
	/* In a pid namespace of its own every process went with the main one;
	 * in another's, runc kills the rest of the container. */
	if (*c->pid_peer)
		cgroup_kill(c);
}

int container_destroy(struct container *c, uint32_t request, struct err *e)
{
	if (c->destroying) {
		set_err(e, "state", EBUSY, "container %s is being destroyed", c->id);
		return -1;
	}
	c->destroying = 1;
	c->destroy_request = request;
	cgroup_kill(c);
	containers_progress();
	return 0;
}

static void unlink_container(struct container *c)
{
	for (struct container **pp = &containers; *pp; pp = &(*pp)->next) {
		if (*pp == c) {
			*pp = c->next;
			return;
		}
	}
}

void containers_progress(void)
{
	for (struct container *c = containers, *next; c; c = next) {
		next = c->next;
		if (!c->destroying || !cgroup_empty(c))
			continue;
		/* Its processes may still be zombies the init has not reaped:
		 * the main loop reaps them, and we come back. */
		if (c->main_pid && !c->main_exited)
			continue;
		teardown(c);
		unlink_container(c);
		reply_ack_later(c->destroy_request);
		TRACE("container %s destroyed", c->id);
		free(c);
	}
}

int container_freeze(struct container *c, int frozen, struct err *e)
{
	char path[160];
	snprintf(path, sizeof(path), "%s/cgroup.freeze", c->cgroup);
	if (write_file(path, frozen ? "1" : "0", 1, 0644)) {
		set_err(e, "system", errno, "freeze %s: %s", c->id, strerror(errno));
		return -1;
	}
	return 0;
}

void containers_unmount_all(void)
{
	for (struct container *c = containers; c; c = c->next)
		umount2(c->rootfs, MNT_DETACH);
	sync();
	while (disks) {
		char path[128];
		disk_path(disks->serial, path, sizeof(path));
		if (umount2(path, 0))
			umount2(path, MNT_DETACH);
		struct disk *d = disks;
		disks = d->next;
		free(d);
	}
	sync();
}
