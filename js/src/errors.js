/** Errors raised by kachery.js. Every refusal of received data is a VerificationError whose
 * message says which rule of spec/ the data broke. */

/** Received data failed verification: malformed, forged, tampered, misdirected or stale. */
export class VerificationError extends Error {
  constructor(message) {
    super(message);
    this.name = 'VerificationError';
  }
}

/** The caller asked for something impossible (an invalid name, URI or argument). */
export class InvalidArgumentError extends Error {
  constructor(message) {
    super(message);
    this.name = 'InvalidArgumentError';
  }
}
