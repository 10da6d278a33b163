import {
  ClusterSchema,
  JobSchema,
  type ClusterConfig,
  type ClusterInput,
  type JobConfig,
  type JobInput,
} from './schema.js';
import { formatZodError } from './errors.js';

/** Declares a job; validated at once so a typo fails where it is written. */
export function defineJob(input: JobInput): JobConfig {
  const parsed = JobSchema.safeParse(input);
  if (!parsed.success) throw formatZodError(parsed.error, input, `job "${String(input?.name)}"`);

  return parsed.data;
}

/** Declares the cluster: the default export of a config module. */
export function defineCluster(input: ClusterInput): ClusterConfig {
  return validateCluster(input, 'defineCluster()');
}

export function validateCluster(input: unknown, source: string): ClusterConfig {
  const parsed = ClusterSchema.safeParse(input);
  if (!parsed.success) throw formatZodError(parsed.error, input, source);

  return parsed.data;
}
