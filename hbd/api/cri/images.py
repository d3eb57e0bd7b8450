"""runtime.v1.ImageService on the Engine API's own image store: an image
pulled through the CRI is the same image `docker images` lists."""

from __future__ import annotations

import os
import time

import grpc

from hbd.api.cri.gen import runtime_v1_pb2 as pb
from hbd.errors import InvalidParameter, NotFound
from hbd.services.image.distribution import Distribution, Platform
from hbd.services.image.model import Image
from hbd.services.image.owners import operator_keys
from hbd.services.image.reference import parse_reference
from hbd.services.image.registry import Credentials
from hbd.services.image.store import ImageStore

Context = grpc.aio.ServicerContext[object, object]


def _uid_and_name(img: Image) -> tuple[int | None, str]:
    """The image's USER as the CRI splits it: a number, or a name."""
    user = str(img.container_config.get("User") or "").split(":")[0]
    if not user:
        return None, ""
    return (int(user), "") if user.isdigit() else (None, user)


def image_message(img: Image) -> pb.Image:
    uid, username = _uid_and_name(img)
    # Kubernetes is the operator's: its references, not tenants' (owners.py).
    message = pb.Image(id=img.id, repo_tags=operator_keys(img.repo_tags),
                       repo_digests=operator_keys(img.repo_digests),
                       size=img.size, username=username, spec=pb.ImageSpec(image=img.id))
    if uid is not None:
        message.uid.value = uid
    return message


class ImageServicer:
    def __init__(self, images: ImageStore, distribution: Distribution) -> None:
        self.images = images
        self.distribution = distribution

    def _find(self, spec: pb.ImageSpec) -> Image | None:
        if not spec.image:
            raise InvalidParameter("ImageSpec.image is empty")
        try:
            return self.images.get(spec.image)
        except NotFound:
            return None

    async def ListImages(self, request: pb.ListImagesRequest,
                         context: Context) -> pb.ListImagesResponse:
        wanted = request.filter.image.image if request.HasField("filter") else ""
        if wanted:
            found = self._find(request.filter.image)
            chosen = [found] if found is not None else []
        else:
            chosen = self.images.all_images()
        return pb.ListImagesResponse(images=[image_message(i) for i in chosen])

    async def ImageStatus(self, request: pb.ImageStatusRequest,
                          context: Context) -> pb.ImageStatusResponse:
        found = self._find(request.image)
        # An absent image is not an error: the answer has no image.
        return pb.ImageStatusResponse(image=image_message(found) if found else None)

    async def PullImage(self, request: pb.PullImageRequest,
                        context: Context) -> pb.PullImageResponse:
        if not request.image.image:
            raise InvalidParameter("ImageSpec.image is empty")
        ref = parse_reference(request.image.image)
        auth = request.auth
        credentials = Credentials(username=auth.username, password=auth.password,
                                  identity_token=auth.identity_token)
        async for _ in self.distribution.pull(ref, Platform.parse(""), credentials):
            pass
        return pb.PullImageResponse(image_ref=self.images.get(str(ref.with_default_tag())).id)

    async def RemoveImage(self, request: pb.RemoveImageRequest,
                          context: Context) -> pb.RemoveImageResponse:
        found = self._find(request.image)
        if found is not None:  # removing an absent image succeeds, as the CRI says
            await self.images.delete(found.id, force=True)
        return pb.RemoveImageResponse()

    async def ImageFsInfo(self, request: pb.ImageFsInfoRequest,
                          context: Context) -> pb.ImageFsInfoResponse:
        root = self.images.root
        st = os.statvfs(root)
        used = sum(i.size for i in self.images.all_images())
        usage = pb.FilesystemUsage(timestamp=time.time_ns(),
                                   fs_id=pb.FilesystemIdentifier(mountpoint=str(root)))
        usage.used_bytes.value = used
        usage.inodes_used.value = max(0, st.f_files - st.f_ffree)
        return pb.ImageFsInfoResponse(image_filesystems=[usage],
                                      container_filesystems=[usage])
