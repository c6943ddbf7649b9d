// Human messages for RES errors (booking.* codes from the services, system.* from the gateway).

const MESSAGES = {
  'booking.seatTaken': 'Sorry, that seat was just taken by someone else.',
  'booking.unknownSeat': 'That seat does not exist on this train.',
  'booking.tooManySeats': 'You cannot hold that many seats at once.',
  'booking.holdExpired': 'Your hold has expired and the seats were released. Please select them again.',
  'booking.notYourHold': 'That hold belongs to someone else.',
  'booking.purchaseInProgress': 'A payment for these seats is already in progress.',
  'booking.paymentDeclined': 'Your payment was declined. Please use another card.',
  'booking.alreadyCancelled': 'This order is already cancelled.',
  'booking.departed': 'This train has already left.',
  'booking.busy': 'The train is busy right now, please try again.',
  'system.accessDenied': 'Please sign in to do that.',
  'system.notFound': 'Not found.',
  'system.invalidParams': 'The request was not valid.',
  'system.invalidQuery': 'Please check origin, destination and date.',
  'system.timeout': 'The service did not answer in time. Please try again.',
  'client.timeout': 'The booking service did not answer in time. Please try again.',
  'system.connectionError': 'No connection to the server. Retrying…',
  'system.disconnected': 'Connection lost. Reconnecting…',
  'system.internalError': 'Something went wrong on our side. Please try again.',
};

const DECLINE_REASONS = {
  card_declined: 'the card was declined',
  insufficient_funds: 'insufficient funds',
  expired_card: 'the card has expired',
};

export function errorCode(err) {
  return err?.code || (err instanceof Error ? 'client.error' : 'unknown');
}

export function errorMessage(err) {
  const code = errorCode(err);
  if (code === 'booking.paymentDeclined') {
    const reason = Object.entries(DECLINE_REASONS).find(([k]) => String(err.message || '').includes(k));
    return `Payment declined${reason ? `: ${reason[1]}` : ''}. Please use another card.`;
  }
  if (code === 'booking.seatTaken') {
    const seats = err.data?.seats?.join(', ') || String(err.message || '').split(':')[1]?.trim();
    return seats ? `Sorry, seat ${seats} was just taken by someone else.` : MESSAGES[code];
  }
  if (code === 'booking.tooManySeats' && err.data?.cap) return `You can hold at most ${err.data.cap} seats at once (you hold ${err.data.held}). Pay for or release some first.`;
  if (code === 'system.invalidParams' && err.message) return `Invalid input: ${err.message}`;
  return MESSAGES[code] || err?.message || String(err);
}
