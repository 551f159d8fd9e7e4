/** A resolved image in the local image store. */
export interface ResolvedImage {
  readonly name: string;
  readonly path: string;
}

/**
 * Local image store port. No registry is reachable: images are files in a local store, and the
 * built-in guest (kernel, initrd, base disk) is the default when a spec leaves a name empty.
 */
export interface ImageStore {
  /** Kernel by name ('' = built-in); NOT_FOUND naming the image when unknown. */
  kernel(name: string): Promise<ResolvedImage>;
  /** Initrd by name ('' = built-in). */
  initrd(name: string): Promise<ResolvedImage>;
  /** Base disk by name ('' = built-in). */
  disk(name: string): Promise<ResolvedImage>;
}
