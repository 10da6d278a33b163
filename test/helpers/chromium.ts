import type { TestContext } from 'node:test';

/** The browser CI installs; PAMPA_CHROMIUM points elsewhere on a developer machine. */
export const CHROMIUM = process.env.PAMPA_CHROMIUM ?? '/usr/bin/chromium';
export const CHROMIUM_MISSING = `${CHROMIUM} is not installed (apt-get install -y --no-install-recommends chromium)`;

/**
 * A dashboard test without its browser: skipped on a developer machine, failed under CI
 * (CI=true), so CI cannot pass without having run the dashboard in Chromium.
 */
export function skipWithoutChromium(t: TestContext): void {
  if (process.env.CI === 'true') {
    throw new Error(
      `${CHROMIUM_MISSING}; CI must run the dashboard tests: install Debian's chromium package`,
    );
  }
  t.skip(CHROMIUM_MISSING);
}

/** Headless, and no background traffic: this machine's network is closed. */
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
