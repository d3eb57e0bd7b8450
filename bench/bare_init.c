/* The bare floor for bench/boot.py: an init that powers the guest off at once.
 * Booting it measures QEMU + the hbd guest kernel and nothing else. */
#include <sys/reboot.h>
#include <unistd.h>

int main(void)
{
	reboot(RB_AUTOBOOT); /* with reboot=t and -no-reboot, QEMU exits */
	return 0;
}
