export { defineCluster, defineJob } from './config/define.js';
export { ConfigError } from './config/errors.js';
export type {
  ClusterConfig,
  ClusterInput,
  JobConfig,
  JobInput,
  NodeInput,
  ProcessingFunction,
  TaskContext,
  TaskRow,
} from './config/schema.js';
export { TableError } from './db/table.js';
