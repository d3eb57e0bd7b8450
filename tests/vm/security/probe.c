/* A static probe run inside containers by test_security_guest.py:
 *   probe syscalls   errno (or 0) of keyctl and unshare(CLONE_NEWUTS)
 *   probe escape     leaves a chroot (needs only CAP_SYS_CHROOT) and lists
 *                    what it finds there: /, /dev, /run/hbd, the image disk, /proc
 *   probe unmount    (CAP_SYS_ADMIN) unmounts its own root and re-enters its
 *                    mount namespace, whose root is then what lies beneath */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static void result(const char *what, long rc)
{
	printf("%s=%s\n", what, rc < 0 ? strerror(errno) : "ok");
}

static void list(const char *dir)
{
	DIR *d = opendir(dir);
	printf("%s:", dir);
	for (struct dirent *e; d && (e = readdir(d));)
		if (e->d_name[0] != '.')
			printf(" %s", e->d_name);
	printf("%s\n", d ? "" : " (none)");
	if (d)
		closedir(d);
}

int main(int argc, char **argv)
{
	if (argc > 1 && !strcmp(argv[1], "syscalls")) {
		result("keyctl", syscall(SYS_keyctl, 0, 0, 0, 0, 0));
		result("unshare", syscall(SYS_unshare, CLONE_NEWUTS));
		return 0;
	}
	if (argc > 1 && !strcmp(argv[1], "unmount")) {
		int ns = open("/proc/self/ns/mnt", O_RDONLY);
		result("unmount", umount2("/", MNT_DETACH));
		result("setns", setns(ns, CLONE_NEWNS));
	} else {
		mkdir("/probe-jail", 0755);
		if (chroot("/probe-jail")) {
			result("chroot", -1);
			return 1;
		}
		for (int i = 0; i < 64; i++)
			chdir("..");
		result("escape", chroot("."));
	}
	list("/");
	list("/dev");
	list("/run/hbd");
	list("/run/hbd/disks/image");
	list("/proc");
	return 0;
}
