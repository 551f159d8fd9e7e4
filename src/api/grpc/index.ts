/**
 * Tether's Flintlock-compatible gRPC API. Compose with
 * `const api = createMicroVmGrpcServer(service, { logger }); await api.listen(address)`; stop with
 * `await api.close()`.
 */
export {
  createMicroVmGrpcServer,
  createMicroVmHandlers,
  DEFAULT_GRPC_ADDRESS,
  GRPC_MAX_CONCURRENT_STREAMS,
  GRPC_MAX_RECEIVE_BYTES,
  GrpcApiServer,
  type GrpcApiServerOptions,
} from './server.js';
export { CreateAdmission, DEFAULT_CREATE_LIMITS, type CreateLimits } from './create-admission.js';
export { createAuthInterceptor, grpcAuthRefusal, grpcCallAuthenticated, grpcServerCredentials, redactMetadata, REDACTED } from './security.js';
export {
  findProtoRoot,
  loadMicroVmProto,
  MICROVM_SERVICE_NAME,
  MICROVM_SERVICE_PACKAGE,
  MICROVM_SERVICE_PROTO,
  MICROVM_TYPES_PROTO,
  PROTO_LOADER_OPTIONS,
  type MicroVmProto,
} from './proto.js';
export {
  ACCEPTED_PROVIDERS,
  DEFAULT_ROOT_VOLUME_ID,
  filterFromListRequest,
  SPEC_LIMITS,
  specFromCreateRequest,
  specFromFlintlock,
  uidFromRequest,
  unimplementedField,
} from './spec-mapping.js';
export {
  ERROR_CODE_TRAILER,
  ERROR_FIELD_TRAILER,
  ERROR_RETRYABLE_TRAILER,
  GRPC_CODE_BY_ERROR_CODE,
  grpcStatusFromError,
  microVmFromRecord,
  STATE_BY_PHASE,
  stateFromPhase,
  timestampFromMs,
  type GrpcErrorStatus,
} from './status-mapping.js';
export type * from './wire-types.js';
